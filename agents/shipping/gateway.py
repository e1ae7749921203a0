"""The carrier gateway: waybill requests in, carrier answers out (I/O, not a core).

One thread per worker consumes ``waybill-requests`` (its own consumer group, so the partitions — one carrier and
warehouse each — are shared among the workers), asks the carrier in batches through a
:class:`~agents.shipping.waybills.CarrierAdapter`, and writes one ``WaybillAnswer`` per request to the shipping
inbox; only then are the requests' offsets committed. A crash in between asks again: the parcel id is the
carrier's idempotency key, so the same number comes back, and the shipping stage ignores the second answer.
What the stage decides depends only on the answers in its log (I7), never on when the carrier answered.

The main job and the tests use :class:`LocalCarrier`, a simulated carrier service whose state lives in Redis
(so every worker's gateway talks to the same carrier): numbers from a range per carrier and warehouse, and on
request refused calls and calls whose answer is lost after the numbers were issued.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from agents.shipping.waybills import (
    CAINIAO_BATCH,
    CarrierAdapter,
    Party,
    WaybillRequest,
    WaybillResult,
    WaybillTimeout,
    WaybillUnavailable,
)
from engine.kafka.gateway import Gateway
from engine.settings import Settings
from engine.topics import Topics
from schemas.shipping import WaybillAnswer, WaybillWanted

log = logging.getLogger("oms.carriers")


@dataclass
class LocalCarrier:
    """A carrier service on this machine, shared through Redis: ``<CARRIER><warehouse no.><serial>`` numbers, a
    range of ``range_size`` per carrier and warehouse; every ``fail_every``-th call of a carrier refused, every
    ``timeout_every``-th call issues and then loses its answer."""

    client: Any  # redis.Redis
    prefix: str
    range_size: int = 1_000_000
    fail_every: int = 0
    timeout_every: int = 0
    max_batch: int = CAINIAO_BATCH

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, "carrier", *parts))

    def apply(self, carrier: str, warehouse: str, requests: Sequence[WaybillRequest]) -> list[WaybillResult]:
        if len(requests) > self.max_batch:
            raise ValueError(f"at most {self.max_batch} parcels per call")
        calls = int(self.client.incr(self._key(carrier, "calls")))
        if self.fail_every and calls % self.fail_every == 0:
            raise WaybillUnavailable("simulated: service unavailable")
        results = [self._issue(carrier, warehouse, r) for r in requests]
        if self.timeout_every and calls % self.timeout_every == 0:
            raise WaybillTimeout("simulated: issued, answer lost")
        return results

    def _issue(self, carrier: str, warehouse: str, request: WaybillRequest) -> WaybillResult:
        issued = self._key(carrier, "issued")
        known = self.client.hget(issued, request.object_id)
        if known is not None:
            return WaybillResult(request.object_id, known.decode())
        serial = int(self.client.incr(self._key(carrier, warehouse, "serial"))) - 1
        if serial >= self.range_size:
            return WaybillResult(request.object_id, None, "range_exhausted")
        number = f"{carrier.upper()[:4]}{self._warehouse_no(warehouse):03d}{serial:09d}"
        if not self.client.hsetnx(issued, request.object_id, number):  # another gateway issued it meanwhile
            number = self.client.hget(issued, request.object_id).decode()
        return WaybillResult(request.object_id, number)

    def _warehouse_no(self, warehouse: str) -> int:
        numbers = self._key("warehouses")
        found = self.client.hget(numbers, warehouse)
        if found is None:
            self.client.hsetnx(numbers, warehouse, int(self.client.incr(self._key("warehouse-count"))))
            found = self.client.hget(numbers, warehouse)
        return int(found)


def to_request(wanted: WaybillWanted) -> WaybillRequest:
    return WaybillRequest(
        object_id=wanted.parcel_id,
        carrier=wanted.carrier,
        warehouse=wanted.warehouse,
        sender=Party(name=wanted.warehouse, phone="", address=wanted.warehouse),
        recipient=wanted.receiver,
        weight_g=wanted.weight_g,
        order_ids=tuple(wanted.order_ids),
        items=tuple((ln.sku, ln.units) for ln in wanted.lines),
    )


def answer_all(adapter: CarrierAdapter, wanted: Sequence[WaybillWanted]) -> list[WaybillAnswer]:
    """One answer per request: per carrier and warehouse in batches, each batch asked once (the shipping stage
    decides about asking again)."""
    groups: dict[tuple[str, str], list[WaybillWanted]] = {}
    for w in wanted:
        groups.setdefault((w.carrier, w.warehouse), []).append(w)
    answers = []
    for (carrier, warehouse), group in groups.items():
        for start in range(0, len(group), adapter.max_batch):
            batch = group[start : start + adapter.max_batch]
            try:
                results = {r.object_id: r for r in adapter.apply(carrier, warehouse, [to_request(w) for w in batch])}
            except WaybillTimeout:
                results = {w.parcel_id: WaybillResult(w.parcel_id, None, "timeout") for w in batch}
            except WaybillUnavailable:
                results = {w.parcel_id: WaybillResult(w.parcel_id, None, "unavailable") for w in batch}
            for w in batch:
                result = results.get(w.parcel_id) or WaybillResult(w.parcel_id, None, "rejected: not in the answer")
                answers.append(answer_to(w, result.waybill, result.error))
    return answers


def answer_to(w: WaybillWanted, waybill: str | None, error: str | None) -> WaybillAnswer:
    return WaybillAnswer(
        request_id=w.request_id,
        tenant=w.tenant,
        shipment_id=w.shipment_id,
        parcel_id=w.parcel_id,
        carrier=w.carrier,
        attempt=w.attempt,
        waybill=waybill,
        error=error,
        ts=w.ts,
    )


class CarrierGateway(Gateway):
    """Consume waybill requests, answer them, commit (at least once; answers are idempotent downstream)."""

    request_type = WaybillWanted

    def __init__(self, settings: Settings, topics: Topics, adapter: CarrierAdapter) -> None:
        super().__init__("carrier-gateway", settings, topics.waybill_requests, topics.dead_letters)
        self.topics = topics
        self.adapter = adapter

    def answer(self, requests: list[WaybillWanted]) -> list[tuple[str, str, Any]]:
        try:
            answers = answer_all(self.adapter, requests)
        except redis.RedisError as exc:  # the simulated carrier is down: as a real one would be, unavailable
            log.warning("carrier unavailable: %s", exc)
            answers = [answer_to(w, None, "unavailable") for w in requests]
        return [(self.topics.shipping_inbox, a.key, a) for a in answers]
