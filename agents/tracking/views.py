"""Carrier webhook (on every worker; bearer token of the tenant):

* ``POST /api/v1/{tenant}/carrier-events`` — one carrier event or a list of them, each ``{"carrier",
  "waybill", "event_id", "status", "occurred_at", "location", "detail"}`` (``status`` one of created, picked_up,
  in_transit, out_for_delivery, delivered, exception, returned_to_sender). 202 once every event is in its
  waybill's tracking inbox; 400/422 with a reason (and the index of the bad event) otherwise, 413 ``oversize``
  for more than ``MAX_EVENTS`` (500) events or a body over ``OMS_MAX_PAYLOAD_BYTES`` — nothing of a refused
  batch is taken, so the carrier can send it again whole (in smaller calls if it was too large). Late and
  repeated events are expected.
"""

from __future__ import annotations

import asyncio
from typing import Any

import faust
import orjson

from engine.app import context
from engine.http.edge import Edge, Problem, at_most, problem, reply
from schemas import wire
from schemas.shipping import CarrierEvent

MAX_EVENTS = 500


def parse(body: bytes, tenant: str) -> list[CarrierEvent]:
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem(400, "malformed_json", "body is not JSON") from None
    items = fields if isinstance(fields, list) else [fields]
    if not items:
        raise Problem(422, "schema_violation", f"an empty list: send 1 to {MAX_EVENTS} events per call")
    at_most(items, MAX_EVENTS, "events in one request")
    events = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise Problem(400, "malformed_json", f"event {i} is not a JSON object")
        if item.get("tenant", tenant) != tenant:
            raise Problem(422, "tenant_mismatch", f"event {i} is for {item.get('tenant')!r}, the path says {tenant!r}")
        try:
            events.append(wire.convert({**item, "kind": "carrier_event", "tenant": tenant}, CarrierEvent))
        except wire.WireError as exc:
            raise Problem(422, exc.reason.value, f"event {i}: {exc.detail}") from None
    return events


def install(app: faust.App, edge: Edge) -> None:
    topics = context(app).topics

    @app.page("/api/v1/{tenant}/carrier-events")
    class CarrierEvents(faust.web.View):
        async def post(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                events = parse(await edge.body(request), tenant)
                producer = await edge.producer()
                await asyncio.gather(*(producer.send(topics.tracking_inbox, e.key, wire.encode(e)) for e in events))
                return reply(self, 202, {"accepted": len(events)})
            except Problem as exc:
                return problem(self, exc)
