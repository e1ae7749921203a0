"""Aftersales API (on every worker; bearer token of the tenant). Each call puts one record in the order's
aftersales inbox and answers 202; what came of it is on ``order-progress`` (or, refused, on the dead letters
with the reason ``return_invalid`` / ``pickup_refused``). 400/422 with a reason for a body that is not valid;
413 ``oversize`` for a body over ``OMS_MAX_PAYLOAD_BYTES`` or more than ``MAX_RETURN_LINES`` (500) lines.

* ``POST /api/v1/{tenant}/orders/{order_id}/returns`` — 退货申请: ``{"return_id", "lines": [{"line_id",
  "quantity"}], "reason"}``. ``return_id`` is the caller's RMA number (a retry with the same id is the same
  request); without one, it is derived from the body.
* ``POST /api/v1/{tenant}/orders/{order_id}/returns/{return_id}/receipt`` — 退货入库: ``{"warehouse", "lines":
  [{"line_id", "quantity", "disposition": "sellable" | "damaged"}]}``.
* ``POST /api/v1/{tenant}/orders/{order_id}/pickup`` — 自提核销: ``{"code", "store"}``.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import faust

from engine.app import context
from engine.http.edge import Edge, Problem, at_most, json_object, problem, reply
from schemas import wire
from schemas.aftersales import MAX_RETURN_LINES, PickupClaim, ReturnReceived, ReturnRequested


def convert(fields: dict[str, Any], tenant: str, kind: str, typ: Any, now: int) -> Any:
    """The body as a record of ``tenant`` (the path decides the tenant and the kind), or a 422 Problem."""
    if fields.get("tenant", tenant) != tenant:
        raise Problem(422, "tenant_mismatch", f"the body is for {fields.get('tenant')!r}, the path says {tenant!r}")
    fields = {**fields, "kind": kind, "tenant": tenant}
    fields.setdefault("ts", now)
    try:
        return wire.convert(fields, typ)
    except wire.WireError as exc:
        raise Problem(422, exc.reason.value, exc.detail) from None


def _lines(fields: dict[str, Any], what: str) -> None:
    """At most ``MAX_RETURN_LINES`` lines (413 naming the limit); the schema says what else a line must be."""
    lines = fields.get("lines")
    if isinstance(lines, list):
        at_most(lines, MAX_RETURN_LINES, f"lines in one {what}")


def return_request(body: bytes, tenant: str, order_id: str, now: int) -> ReturnRequested:
    fields = json_object(body)
    _lines(fields, "return request")
    if "return_id" not in fields:  # the same body is the same request
        fields["return_id"] = "r." + hashlib.blake2b(body, digest_size=8).hexdigest()
    fields = {**fields, "order_id": order_id, "source": "api"}
    return convert(fields, tenant, "return_requested", ReturnRequested, now)


def return_receipt(body: bytes, tenant: str, order_id: str, return_id: str, now: int) -> ReturnReceived:
    fields = {**json_object(body), "order_id": order_id, "return_id": return_id}
    _lines(fields, "return receipt")
    return convert(fields, tenant, "return_received", ReturnReceived, now)


def pickup_claim(body: bytes, tenant: str, order_id: str, caller: str, now: int) -> PickupClaim:
    fields = json_object(body)
    fields = {"actor": caller.replace(":", "-"), **fields, "order_id": order_id}
    return convert(fields, tenant, "pickup_claim", PickupClaim, now)


def install(app: faust.App, edge: Edge) -> None:
    topics = context(app).topics

    async def accept(view: faust.web.View, record: Any, body: dict[str, Any]) -> faust.web.Response:
        await (await edge.producer()).send(topics.aftersales_inbox, record.key, wire.encode(record))
        return reply(view, 202, body)

    @app.page("/api/v1/{tenant}/orders/{order_id}/returns")
    class Returns(faust.web.View):
        async def post(self, request: Any, tenant: str, order_id: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                record = return_request(await edge.body(request), tenant, order_id, _now())
                return await accept(self, record, {"order_id": order_id, "return_id": record.return_id})
            except Problem as exc:
                return problem(self, exc)

    @app.page("/api/v1/{tenant}/orders/{order_id}/returns/{return_id}/receipt")
    class ReturnReceipt(faust.web.View):
        async def post(self, request: Any, tenant: str, order_id: str, return_id: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                record = return_receipt(await edge.body(request), tenant, order_id, return_id, _now())
                return await accept(self, record, {"order_id": order_id, "return_id": return_id})
            except Problem as exc:
                return problem(self, exc)

    @app.page("/api/v1/{tenant}/orders/{order_id}/pickup")
    class Pickup(faust.web.View):
        async def post(self, request: Any, tenant: str, order_id: str) -> faust.web.Response:
            try:
                caller = edge.authenticate(request, tenant)
                record = pickup_claim(await edge.body(request), tenant, order_id, caller, _now())
                return await accept(self, record, {"order_id": order_id})
            except Problem as exc:
                return problem(self, exc)


def _now() -> int:
    return int(time.time() * 1000)
