"""Aftersales API (on every worker; bearer token of the tenant). Each call puts one record in the order's
aftersales inbox and answers 202; what came of it is on ``order-progress`` (or, refused, on the dead letters
with the reason ``return_invalid`` / ``pickup_refused``). 400/422 with a reason for a body that is not valid;
413 ``oversize`` for a body over ``OMS_MAX_PAYLOAD_BYTES`` or more than ``MAX_RETURN_LINES`` (500) lines.

* ``POST /api/v1/{tenant}/orders/{order_id}/returns`` — 退货申请: ``{"return_id", "lines": [{"line_id",
  "quantity"}], "reason"}``. ``return_id`` is the caller's RMA number (a retry with the same id is the same
  request); without one, it is derived from the body.
* ``POST /api/v1/{tenant}/orders/{order_id}/returns/{return_id}/receipt`` — 退货入库: ``{"warehouse", "lines":
  [{"line_id", "quantity", "disposition": "sellable" | "damaged"}]}``. ``warehouse`` is where the lines left
  from (the stage refuses any other: ``return_invalid``); a ``…/quarantine`` location is a 422 here — damaged
  units go to the warehouse's quarantine by their disposition.
* ``POST /api/v1/{tenant}/orders/{order_id}/pickup`` — 自提核销: ``{"code", "store", "claim_id"}`` (or the
  claim id as an ``Idempotency-Key`` header). ``store`` is required (422 without it). A claim sent again with the
  same id is the same claim: the same 202 here, its first outcome in the stage, never a second hand-over;
  without an id, order, store and code make it. The actor recorded is the caller as the token says. 503 when
  the worker has no ``OMS_PICKUP_SECRET`` (pickup codes are then neither issued nor accepted).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import faust
import msgspec

from agents.aftersales.core import claim_key
from engine.app import context
from engine.http.edge import Edge, Problem, at_most, json_object, problem, reply
from schemas import wire
from schemas.aftersales import MAX_RETURN_LINES, PickupClaim, ReturnReceived, ReturnRequested, is_quarantine


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
    record = convert(fields, tenant, "return_received", ReturnReceived, now)
    if is_quarantine(record.warehouse):
        raise Problem(
            422,
            "return_invalid",
            f"{record.warehouse} is a quarantine location: name the warehouse the lines left from "
            "(damaged units go to its quarantine by their disposition)",
        )
    return record


def pickup_claim(
    body: bytes, tenant: str, order_id: str, caller: str, secret: str, now: int, idempotency_key: str | None = None
) -> PickupClaim:
    """The claim as a record: the store required, the claim id from the body or the ``Idempotency-Key`` header
    (derived from order, store and code under the secret when neither is sent), the actor from the token."""
    fields = json_object(body)
    if fields.get("store") in (None, ""):
        raise Problem(422, "schema_violation", "store is required: the store handing the goods over")
    key = (idempotency_key or "").strip() or None
    if key is not None and fields.get("claim_id", key) != key:
        raise Problem(422, "schema_violation", "claim_id and the Idempotency-Key header differ")
    fields = {**fields, "order_id": order_id, "actor": caller.replace(":", "-")}  # never the body's actor
    if key is not None:
        fields["claim_id"] = key
    record: PickupClaim = convert(fields, tenant, "pickup_claim", PickupClaim, now)
    if record.claim_id is None:
        derived = claim_key(secret.encode(), tenant, order_id, record.store, record.code)
        record = msgspec.structs.replace(record, claim_id=derived)
    return record


def install(app: faust.App, edge: Edge) -> None:
    topics = context(app).topics
    secret = context(app).settings.pickup_secret

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
                if not secret:
                    raise Problem(
                        503,
                        "not_configured",
                        "store pickups are not served here: OMS_PICKUP_SECRET is not set on this worker",
                    )
                body = await edge.body(request)
                key = request.headers.get("Idempotency-Key")
                record = pickup_claim(body, tenant, order_id, caller, secret, _now(), key)
                return await accept(self, record, {"order_id": order_id, "claim_id": record.claim_id})
            except Problem as exc:
                return problem(self, exc)


def _now() -> int:
    return int(time.time() * 1000)
