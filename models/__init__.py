"""heartwatch models: the pure-ML core shared by the batch pipelines and the streaming detector.

Nothing here imports Apache Beam or Kafka. The shared vocabulary (beat length, feature keys,
reconstruction error, thresholds, the exported detector's loader) lives here once, so that batch
training and streaming scoring cannot drift apart.
"""
