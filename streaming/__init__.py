"""heartwatch streaming: a Kafka consumer group that scores heartbeats with the exported detector."""
