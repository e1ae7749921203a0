"""Faust's aiokafka transport with three fixes: no partition is left past records it never processed,
Faust's read-offset filter (which drops re-fetched records) is off, and ``Consumer.seek`` runs in the
consumer's own thread.

After a rebalance Faust seeks every stream partition to its committed offset, but aiokafka's
``seek_to_committed`` only seeks when the committed offset is ``> 0``. A partition with no commit yet
(or a commit at 0) keeps whatever position the fetcher reached while Faust was restoring a table — the
fetcher runs during active recovery and the records it drops there are never delivered again. Seen
here as whole partitions of ``inventory-commands`` silently skipped by a worker that had to restore its
saga table (faust-streaming #166 and #629 report the same symptom). Such partitions are sent back to
the start here (``consumer_auto_offset_reset``), which is where an uncommitted partition begins.

Selected by the broker URL scheme ``oms+kafka://`` (engine.app uses it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers import aiokafka as base
from faust.types import TP

SCHEME = "oms+kafka"


class ConsumerThread(base.AIOKafkaConsumerThread):
    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(self._seek_to_committed_or_reset)

    async def _seek_to_committed_or_reset(self) -> Mapping[TP, int]:
        consumer = self._ensure_consumer()
        committed = await consumer.seek_to_committed()
        unpositioned = [tp for tp, offset in committed.items() if not offset]  # None (no commit) or 0
        if unpositioned:
            # Look the offsets up and seek() to them: seek_to_beginning() would leave the position unset
            # until its lookup returns, and Faust's livelock check asserts a position in that window.
            if self.app.conf.consumer_auto_offset_reset == "latest":
                targets = await consumer.end_offsets(unpositioned)
            else:
                targets = await consumer.beginning_offsets(unpositioned)
            for tp, offset in targets.items():
                consumer.seek(tp, offset)
        return committed

    def verify_event_path(self, now: float, tp: TP) -> None:
        # Faust's livelock check reads the fetch position, which aiokafka asserts is set; during an offset
        # reset it is not, and the AssertionError would crash the whole consumer. Skip the check then.
        aiotp = base.TopicPartition(tp.topic, tp.partition)
        assignment = self._ensure_consumer()._subscription.subscription
        if assignment is not None:
            state = assignment.assignment.state_value(aiotp)
            if state is not None and not state.has_valid_position:
                return None
        return super().verify_event_path(now, tp)


class _NoReadFilter(dict):
    """Faust's per-partition "read offset" answers "unknown" here, for every partition.

    Faust drops every delivered record below it as already read, and books a jump past it as a gap that the
    commit may skip. Both lose records: records fetched before a seek are delivered after it and push the read
    offset past the records re-fetched from the seek target, which are then dropped (seen: a stage's input
    partition resumed three records past its state after a rebalance). The stages admit records strictly in
    offset order against their own offsets table (engine.stage), so nothing needs Faust's filter.
    """

    def __getitem__(self, tp: TP) -> None:
        return None


class Consumer(base.Consumer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_offset = _NoReadFilter()

    def _new_consumer_thread(self) -> base.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _seek(self, partition: TP, offset: int) -> None:
        # Faust calls aiokafka's seek from the caller's thread, racing the fetcher in the consumer thread
        # (seen: KeyError in Fetcher.fetched_records, the fetcher crashed). Run it in that thread.
        await self._thread.call_thread(self._thread.seek, partition, offset)


class Transport(base.Transport):
    Consumer = Consumer


def register() -> None:
    TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:Transport")
