"""Commit bookkeeping of the stream: a batch's offsets are committed only after its output is acknowledged.

``CommitTracker`` holds the processed batches whose output the broker has not acknowledged yet, in
order, each with the offsets it would commit and the delivery of everything it emitted.
``commit_acknowledged`` commits (asynchronously, batch by batch in order) every leading batch whose
records were all acknowledged; a failed send raises ``DeliveryError`` and neither that batch nor any later
one is committed. ``commit_positions`` commits every processed position synchronously (shutdown),
``release`` hands back the positions of revoked partitions so the rebalance listener commits them
before the partitions go.

The tracker does no locking: the consumer calls it under its batch lock (the revoke callback runs on
kafka-python's IO thread).
"""

from __future__ import annotations

import collections
import dataclasses
import logging

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

LOGGER = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """The broker did not acknowledge a batch's output; its offsets are not committed."""


@dataclasses.dataclass
class InFlightBatch:
    """A processed batch whose output the broker has not acknowledged yet: its offsets wait.

    ``delivery`` is the outcome of everything the batch emitted (``streaming.kafka_clients.send_many``):
    ``is_done`` once each record was acknowledged or refused, ``errors`` the refusals, ``count`` the records.
    """

    offsets: dict
    delivery: object


def offsets_to_commit(records) -> dict:
    """``{TopicPartition: OffsetAndMetadata(last offset + 1)}`` for a batch of consumer records."""
    highest = {}
    for record in records:  # plain tuples as keys: one TopicPartition per partition, not per record
        key = (record.topic, record.partition)
        if record.offset > highest.get(key, -1):
            highest[key] = record.offset
    return {TopicPartition(*key): OffsetAndMetadata(offset + 1, "", -1) for key, offset in highest.items()}


def log_failed_commit(offsets, result) -> None:
    """Commit callback: a failed commit only means re-reading those messages later (at-least-once)."""
    if isinstance(result, Exception):
        LOGGER.warning("commit of %s failed (%s); those messages will be re-read by their next owner",
                       {f"{partition.topic}/{partition.partition}": meta.offset for partition, meta in offsets.items()},
                       result)


class CommitTracker:
    """The queue of unacknowledged batches and the positions committed so far, for one consumer."""

    def __init__(self, consumer, producer, send_timeout_seconds: float):
        self.consumer = consumer
        self.producer = producer
        self.send_timeout_seconds = send_timeout_seconds
        self.in_flight: collections.deque[InFlightBatch] = collections.deque()
        self.positions: dict = {}
        self.commits = 0

    def __len__(self) -> int:
        """How many batches wait for their acknowledgement."""
        return len(self.in_flight)

    def add(self, records, delivery) -> None:
        """Queues a processed batch: its offsets are committed once every record of ``delivery`` succeeded."""
        self.in_flight.append(InFlightBatch(offsets_to_commit(records), delivery))

    def commit_acknowledged(self, wait: bool = False) -> None:
        """Commits, in order, the offsets of every leading batch whose output the broker acknowledged.

        With ``wait`` the producer is flushed first and every queued batch must be acknowledged. A
        failed send raises DeliveryError, and neither that batch nor any later one is committed. The
        commit is sent asynchronously (commits of one member are applied in order); revoke and
        shutdown then commit every position synchronously.
        """
        if wait and self.in_flight:
            self.producer.flush(timeout=self.send_timeout_seconds)
        offsets = {}
        while self.in_flight and self.in_flight[0].delivery.is_done:
            batch = self.in_flight[0]
            failures = batch.delivery.errors
            if failures:
                raise DeliveryError(f"{len(failures)} of {batch.delivery.count} output records were not "
                                    f"acknowledged (first: {failures[0]!r}); offsets not committed")
            offsets.update(batch.offsets)
            self.in_flight.popleft()
        if wait and self.in_flight:
            raise DeliveryError(f"output of {len(self.in_flight)} batches was not acknowledged within "
                                f"{self.send_timeout_seconds} s; offsets not committed")
        if offsets:
            self._commit(offsets)

    def _commit(self, offsets: dict) -> None:
        for partition, meta in offsets.items():
            self.positions[partition] = meta.offset
        self.commits += 1
        self.consumer.commit_async(offsets, callback=log_failed_commit)

    def commit_positions(self) -> None:
        """Synchronously commits every processed position (so no asynchronous commit is left in flight)."""
        offsets = {partition: OffsetAndMetadata(offset, "", -1) for partition, offset in self.positions.items()}
        if not offsets:
            return
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as error:
            log_failed_commit(offsets, error)

    def release(self, partitions) -> dict:
        """Forgets the positions of ``partitions`` (revoked); returns them as offsets to commit."""
        return {partition: OffsetAndMetadata(self.positions.pop(partition), "", -1)
                for partition in partitions if partition in self.positions}

    def discard(self) -> None:
        """Drops the unacknowledged batches (after a failure: left uncommitted, re-read by the next owner)."""
        self.in_flight.clear()
