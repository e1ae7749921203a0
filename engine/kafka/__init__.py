"""Kafka plumbing: admin calls, producers and readers (confluent-kafka), transactions, and the Faust transport.

Every producer made here partitions with ``murmur2_random``, the Java/aiokafka partitioner that Faust uses, so
a key lands on the same partition whoever writes it. Every reader reads ``read_committed``:
stages write their outputs in transactions, and a fenced writer's aborted records must never be seen.
"""
