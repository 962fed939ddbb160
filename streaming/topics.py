"""The stream's vocabulary: default topic names and the partition count of the topics it creates.

Every streaming command, the demo, the tests and the benchmark name topics through these constants
(``streaming.config``'s flag defaults are the same values), so a topic is spelled once.
"""

INPUT_TOPIC = "heartbeats"
EVENTS_TOPIC = "heartwatch-anomalies"
DEAD_LETTER_TOPIC = "heartwatch-dead-letter"
ALERTS_TOPIC = "heartwatch-alerts"
SCORES_TOPIC = "heartwatch-scores"

# Partitions of a topic the stream, replay or demo creates when it is missing (existing topics keep theirs).
DEFAULT_PARTITIONS = 4
