"""Pickers' API (on every worker; bearer token of the tenant):

* ``POST /api/v1/{tenant}/pick-confirmations`` — body: a pick confirmation (拣货确认) without ``kind`` and
  ``tenant``: ``{"warehouse", "pick_list_id", "lines": [{"shipment_id", "line_id", "bin", "picked"}], "picker",
  "ts"}`` (``ts`` defaults to now). 202 once it is in the warehouse's fulfilment inbox; 400/422 with a reason for
  a body that is not a confirmation; 413 ``oversize`` for a body over ``OMS_MAX_PAYLOAD_BYTES`` or more than
  ``MAX_PICK_LINES`` (2,000) lines. Whether it matched its pick list is decided by the warehouse's single
  writer: the answer is on the ``pick-outcomes`` topic (confirmed, with the short stops; or refused, and
  dead-lettered, with why).
"""

from __future__ import annotations

import time
from typing import Any

import faust

from engine.app import context
from engine.http.edge import Edge, Problem, at_most, json_object, problem, reply
from schemas import wire
from schemas.fulfilment import PickConfirmation

#: Most stops one confirmation may report: the record's own limit (``PickConfirmation.lines``), told as a 413.
MAX_PICK_LINES = 2_000


def install(app: faust.App, edge: Edge) -> None:
    topics = context(app).topics

    @app.page("/api/v1/{tenant}/pick-confirmations")
    class PickConfirmations(faust.web.View):
        async def post(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                caller = edge.authenticate(request, tenant)
                confirmation = parse(await edge.body(request), tenant, caller, int(time.time() * 1000))
                await (await edge.producer()).send(topics.fulfilment_inbox, confirmation.key, wire.encode(confirmation))
                body = {"pick_list_id": confirmation.pick_list_id, "warehouse": confirmation.warehouse}
                return reply(self, 202, body)
            except Problem as exc:
                return problem(self, exc)


def parse(body: bytes, tenant: str, caller: str, now: int) -> PickConfirmation:
    """The request body as a confirmation of ``tenant``, or a Problem (400 not JSON, 413 too many lines, 422 not a
    confirmation)."""
    fields = json_object(body)
    if isinstance(fields.get("lines"), list):
        at_most(fields["lines"], MAX_PICK_LINES, "lines in one pick confirmation")
    if fields.get("tenant", tenant) != tenant:
        raise Problem(422, "tenant_mismatch", f"the body is for {fields.get('tenant')!r}, the path says {tenant!r}")
    fields = {**fields, "kind": "pick", "tenant": tenant}
    fields.setdefault("ts", now)
    fields.setdefault("picker", caller.replace(":", "-"))
    try:
        return wire.convert(fields, PickConfirmation)
    except wire.WireError as exc:
        raise Problem(422, exc.reason.value, exc.detail) from None
