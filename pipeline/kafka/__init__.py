"""Kafka at the edges: the embedded broker, clients, topic administration and `tail`."""
