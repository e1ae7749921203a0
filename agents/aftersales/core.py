"""One order after acceptance (售后与履约跟踪), pure: ``(state, event) -> (state, outputs)``. Key: ``tenant:order_id``.

* **Shipped** (goods issued, from shipping): the platform is told — a write-back request in its own shape
  (agents.aftersales.writeback) through the outbox, retried with the same idempotency key until the platform
  acknowledges it or the attempts run out — and the customer is notified (发货通知).
* **Tracking** (from the tracking stage): an exception or a return to sender is recorded when it happens;
  the order is delivered when every waybill of it is and nothing is left to ship (签收通知).
* **Returns** (退货): a request names lines and units up to what shipped and is not yet returned; the receipt
  says per line what the units are fit for — sellable units go back to the warehouse's stock (a ``return``
  command to the SKU's writer), damaged ones to its quarantine location (counted, never reserved) — and a
  ``ReturnSettled`` record carries the refund per line for finance to reverse revenue and cost. Units come back
  only to the warehouse (or store) their line left from: a receipt naming any other place — a warehouse the
  layout does not have, another one of the tenant's, a raw ``…/quarantine`` location — is refused.
* **Store pickup** (门店自提): once reserved in the store, a pickup code is issued (deterministic: a keyed digest
  of the order under the deployment's secret, so a replay issues the same code; without a secret no code is
  issued and the pickup can only expire); a claim at the order's store with the code hands the goods over
  (``issue`` commands and a goods-issued record, as a shipment would). Each claim has an id (the client's
  idempotency key): a claim seen before gets its first answer again and never a second hand-over.
  ``PICKUP_ATTEMPTS`` wrong codes lock the pickup for good (counted in the state, so a replay locks it at the
  same claim): it is then refused to everyone and expires. A pickup unclaimed by its deadline (record time,
  moved by ticks) is cancelled through the order stage, which releases the reservations. A **counter** sale
  (POS) is a pickup claimed on the spot.

Every output id is derived from the inputs, so a redelivered input changes nothing and a replay gives the same
bytes. Time is the record's time.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgspec

from agents.aftersales import writeback
from engine.runtime.kit import Step
from engine.runtime.stamp import Stamp
from schemas import keys
from schemas.aftersales import (
    CustomerNotification,
    OrderOpened,
    OrderProgress,
    OrderTracking,
    PickupClaim,
    PickupReady,
    ProgressEvent,
    ReturnReceived,
    ReturnRequested,
    ReturnSettled,
    SettledLine,
    SoldLine,
    WriteBackRequest,
    WriteBackResult,
    is_quarantine,
    quarantine,
)
from schemas.inbox import OperatorAction
from schemas.inventory import Issue, Return, issue_id, return_id
from schemas.order import Address, root_line
from schemas.review import OperatorActionKind
from schemas.shipping import GoodsIssued, PackedLine, TrackingStatus

#: Requests per write-back before it is recorded as failed (the platform keeps refusing).
WRITEBACK_ATTEMPTS = 5
#: Wrong pickup codes (distinct claims) after which a pickup is locked: every later claim is refused and it expires.
PICKUP_ATTEMPTS = 5


class WaybillSeen(msgspec.Struct, kw_only=True):
    carrier: str
    status: str = TrackingStatus.CREATED.value
    exception: bool = False
    final: bool = False


class WriteBackState(msgspec.Struct, kw_only=True):
    request: WriteBackRequest  # the current attempt
    status: str = "pending"  # pending, acknowledged, failed
    errors: list[str] = msgspec.field(default_factory=list)


class ReturnState(msgspec.Struct, kw_only=True):
    lines: dict[str, int]  # line -> units asked to return
    requested_at: int
    received_at: int | None = None


class PickupState(msgspec.Struct, kw_only=True):
    store: str
    lines: list[tuple[str, str, int]]  # (line, sku, units)
    code: str  # "" when no code could be issued (no secret configured): nobody can claim it
    reply_to: str
    ready_at: int
    expires_at: int
    status: str = "ready"  # ready, claimed, expired (a locked pickup stays ready until it expires)
    wrong: int = 0  # wrong codes so far: PICKUP_ATTEMPTS of them lock it
    #: claim id -> its answer: "" handed over, else why it was refused. Only claims that changed the state (the
    #: wrong codes counted, the one that took the goods) are kept — at most PICKUP_ATTEMPTS + 1; every other
    #: refusal follows from what never changes again (the store, claimed, expired, locked).
    answers: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def locked(self) -> bool:
        return self.wrong >= PICKUP_ATTEMPTS


class AftersalesState(msgspec.Struct, kw_only=True):
    tenant: str
    order_id: str
    channel: str
    shop_id: str
    platform_order_id: str
    receiver: Address
    lines: list[SoldLine]
    delivery: str = "ship"
    pickup_store: str | None = None
    opened_at: int = 0
    shipped: dict[str, int] = msgspec.field(default_factory=dict)  # line -> units issued
    warehouse_of: dict[str, str] = msgspec.field(default_factory=dict)  # line -> the warehouse it left from
    issues: list[str] = msgspec.field(default_factory=list)  # goods-issued ids applied
    waybills: dict[str, WaybillSeen] = msgspec.field(default_factory=dict)
    writebacks: dict[str, WriteBackState] = msgspec.field(default_factory=dict)  # idempotency key -> state
    returns: dict[str, ReturnState] = msgspec.field(default_factory=dict)
    returned: dict[str, int] = msgspec.field(default_factory=dict)  # line -> units asked back (requests)
    delivered_at: int | None = None
    pickup: PickupState | None = None
    updated_at: int = 0  # record time of the last change: forgotten a retention after it

    @property
    def key(self) -> str:
        return keys.order(self.tenant, self.order_id)

    def line(self, line_id: str) -> SoldLine | None:
        """The sold line a shipped line is (or, for a short pick's remainder ``…/r``, belongs to)."""
        root = root_line(line_id)
        return next((ln for ln in self.lines if ln.line_id == root), None)

    def left_to_ship(self) -> bool:
        return any(self.shipped.get(ln.line_id, 0) < ln.quantity for ln in self.lines)


def pickup_code(secret: bytes, tenant: str, order_id: str) -> str:
    """A 6-digit pickup code (自提码): a keyed digest of the order, the same on every replay, not guessable
    without the deployment's secret."""
    digest = hashlib.blake2b(f"{tenant}:{order_id}".encode(), key=secret[:64], digest_size=8).digest()
    return f"{int.from_bytes(digest, 'big') % 1_000_000:06d}"


def claim_key(secret: bytes, tenant: str, order_id: str, store: str | None, code: str) -> str:
    """The id of a claim that came without one: the same order, store and code are the same claim (a keyed
    digest, so the id does not give the code away)."""
    digest = hashlib.blake2b(f"{tenant}:{order_id}:{store or ''}:{code}".encode(), key=secret[:64], digest_size=10)
    return f"pc.{digest.hexdigest()}"


def _copy(state: AftersalesState) -> AftersalesState:
    """A copy deep enough for one step (every container the handlers change is new)."""
    return msgspec.convert(msgspec.to_builtins(state), AftersalesState)


def _progress(
    state: AftersalesState, event: ProgressEvent, now: int, ref: str, detail: str = "", waybill: str | None = None
) -> OrderProgress:
    return OrderProgress(
        progress_id=f"{state.order_id}.{event.value}.{ref}",
        tenant=state.tenant,
        order_id=state.order_id,
        event=event,
        detail=detail,
        waybill=waybill,
        ts=now,
    )


def _notify(state: AftersalesState, template: str, now: int, ref: str, **params: str) -> CustomerNotification:
    return CustomerNotification(
        notification_id=f"{state.order_id}.{template}.{ref}",
        tenant=state.tenant,
        order_id=state.order_id,
        template=template,  # type: ignore[arg-type]
        to_masked=writeback.mask_phone(state.receiver.phone),
        params={"order_no": state.platform_order_id, **params},
        ts=now,
    )


def on_opened(state: AftersalesState | None, opened: OrderOpened, now: int) -> Step:
    if state is not None:
        return Step(state, note="duplicate_opened")
    new = AftersalesState(
        tenant=opened.tenant,
        order_id=opened.order_id,
        channel=opened.channel.value,
        shop_id=opened.shop_id,
        platform_order_id=opened.platform_order_id,
        receiver=opened.receiver,
        lines=list(opened.lines),
        delivery=opened.delivery,
        pickup_store=opened.pickup_store,
        opened_at=now,
    )
    return Step(new, True, note="opened")


# -- shipped, tracked, written back ---------------------------------------------------------------------------
def on_goods_issued(state: AftersalesState | None, issued: GoodsIssued, now: int) -> Step:
    """Goods left for this order: write back to the platform, notify the customer."""
    if state is None:
        return Step(None, note="unknown_order")
    if issued.issue_id in state.issues:
        return Step(state, note="duplicate_goods_issued")
    new = _copy(state)
    new.issues.append(issued.issue_id)
    for ln in issued.lines:
        new.shipped[ln.line_id] = new.shipped.get(ln.line_id, 0) + ln.units
        new.warehouse_of[ln.line_id] = issued.warehouse
    outputs: list[Any] = []
    partial = new.left_to_ship()
    detail = "partial" if partial else "complete"
    if not issued.waybills:  # handed over in a store: nothing to track or write back by waybill
        return Step(new, True, [_progress(new, ProgressEvent.PICKED_UP, now, issued.issue_id)], note="handed_over")
    for waybill in issued.waybills:
        new.waybills.setdefault(waybill, WaybillSeen(carrier=issued.carriers.get(waybill, "")))
    waybill = issued.waybills[0]
    carrier = new.waybills[waybill].carrier
    wb = writeback.write_back(new, [ln.line_id for ln in issued.lines], carrier, waybill, partial)
    said = detail if wb.request is not None else f"{detail}; no write-back: {wb.reason}"
    outputs.append(_progress(new, ProgressEvent.SHIPPED, now, issued.issue_id, said, waybill))
    if wb.request is not None and wb.method is not None:
        request = WriteBackRequest(
            request_id=f"{wb.idempotency_key}#1",
            tenant=new.tenant,
            order_id=new.order_id,
            platform=wb.channel,
            method=wb.method,
            request=wb.request,
            idempotency_key=wb.idempotency_key,
            attempt=1,
            waybill=waybill,
            ts=now,
        )
        new.writebacks[wb.idempotency_key] = WriteBackState(request=request)
        outputs.append(request)
    outputs.append(_notify(new, "shipped", now, waybill, carrier=writeback.carrier_name(carrier), waybill=waybill))
    return Step(new, True, outputs, note=f"shipped_{detail}")


def on_tracking(state: AftersalesState | None, tracking: OrderTracking, now: int) -> Step:
    if state is None:
        return Step(None, note="unknown_order")
    seen = state.waybills.get(tracking.waybill)
    if seen is None:
        return Step(state, note="unknown_waybill")
    if (seen.status, seen.exception, seen.final) == (tracking.status.value, tracking.exception, tracking.final):
        return Step(state, note="tracking_unchanged")
    new = _copy(state)
    current = new.waybills[tracking.waybill]
    opened_exception = tracking.exception and not current.exception
    current.status, current.exception, current.final = tracking.status.value, tracking.exception, tracking.final
    outputs: list[Any] = []
    ref = f"{tracking.waybill}.{tracking.occurred_at}"
    if opened_exception:
        outputs.append(_progress(new, ProgressEvent.EXCEPTION, now, ref, "carrier exception", tracking.waybill))
    if tracking.status is TrackingStatus.RETURNED:
        outputs.append(_progress(new, ProgressEvent.RETURNED_TO_SENDER, now, ref, "", tracking.waybill))
    delivered = all(w.status == TrackingStatus.DELIVERED.value for w in new.waybills.values())
    if delivered and new.delivered_at is None and not new.left_to_ship():
        new.delivered_at = now
        outputs.append(_progress(new, ProgressEvent.DELIVERED, now, "all", "", tracking.waybill))
        outputs.append(_notify(new, "delivered", now, "all", waybill=tracking.waybill))
    return Step(new, True, outputs, note="tracking")


def on_writeback_result(state: AftersalesState | None, result: WriteBackResult, now: int) -> Step:
    if state is None:
        return Step(None, note="unknown_order")
    held = state.writebacks.get(result.idempotency_key)
    if held is None or held.status != "pending" or held.request.request_id != result.request_id:
        return Step(state, note="late_writeback_result")
    new = _copy(state)
    held = new.writebacks[result.idempotency_key]
    if result.ok:
        held.status = "acknowledged"
        detail = f"{held.request.platform} {result.platform_ref}".strip()
        event = _progress(new, ProgressEvent.WRITTEN_BACK, now, result.idempotency_key, detail, held.request.waybill)
        return Step(new, True, [event], note="written_back")
    held.errors = [*held.errors, f"#{result.attempt}: {result.error}"][-WRITEBACK_ATTEMPTS:]
    if held.request.attempt >= WRITEBACK_ATTEMPTS:
        held.status = "failed"
        detail = "; ".join(held.errors)
        event = _progress(
            new, ProgressEvent.WRITEBACK_FAILED, now, result.idempotency_key, detail, held.request.waybill
        )
        return Step(new, True, [event], note="writeback_failed")
    attempt = held.request.attempt + 1
    held.request = msgspec.structs.replace(
        held.request, request_id=f"{result.idempotency_key}#{attempt}", attempt=attempt, ts=now
    )
    return Step(new, True, [held.request], note="writeback_retry")


# -- returns --------------------------------------------------------------------------------------------------
def on_return_requested(state: AftersalesState | None, request: ReturnRequested, now: int) -> Step:
    if state is None:
        return Step(None, refused=("return_invalid", f"{request.order_id} is not known here (never approved)"))
    if request.return_id in state.returns:
        return Step(state, note="duplicate_return_request")
    wanted: dict[str, int] = {}
    for ln in request.lines:
        wanted[ln.line_id] = wanted.get(ln.line_id, 0) + ln.quantity
    for line, units in wanted.items():
        free = state.shipped.get(line, 0) - state.returned.get(line, 0)
        if units > free:
            detail = f"{request.return_id}: {line} asks {units} back, {free} shipped and not yet asked back"
            return Step(state, refused=("return_invalid", detail))
    new = _copy(state)
    new.returns[request.return_id] = ReturnState(lines=wanted, requested_at=now)
    for line, units in wanted.items():
        new.returned[line] = new.returned.get(line, 0) + units
    detail = ", ".join(f"{line}×{units}" for line, units in sorted(wanted.items()))
    return Step(
        new,
        True,
        [_progress(new, ProgressEvent.RETURN_REQUESTED, now, request.return_id, detail)],
        note="return_requested",
    )


def on_return_received(state: AftersalesState | None, received: ReturnReceived, stamp: Stamp, now: int) -> Step:
    """Inspected returned goods: sellable units back to stock, damaged ones to quarantine, and the refund."""
    if state is None:
        return Step(None, refused=("return_invalid", f"{received.order_id} is not known here"))
    asked = state.returns.get(received.return_id)
    if asked is None:
        return Step(state, refused=("return_invalid", f"{received.return_id} was never requested"))
    if asked.received_at is not None:
        return Step(state, note="duplicate_return_receipt")
    got: dict[str, int] = {}
    for ln in received.lines:
        got[ln.line_id] = got.get(ln.line_id, 0) + ln.quantity
    for line, units in got.items():
        if units > asked.lines.get(line, 0):
            detail = f"{received.return_id}: {line} received {units}, {asked.lines.get(line, 0)} asked back"
            return Step(state, refused=("return_invalid", detail))
    if is_quarantine(received.warehouse):
        detail = (
            f"{received.return_id}: received into {received.warehouse}, a quarantine location; name the warehouse "
            "(damaged units go to its quarantine by their disposition)"
        )
        return Step(state, refused=("return_invalid", detail))
    for line in got:
        left_from = state.warehouse_of.get(line)
        if left_from != received.warehouse:
            detail = (
                f"{received.return_id}: {line} left from {left_from or 'nowhere known'}; its units come back "
                f"there, not to {received.warehouse}"
            )
            return Step(state, refused=("return_invalid", detail))
    new = _copy(state)
    new.returns[received.return_id].received_at = now
    commands: list[Return] = []
    settled: list[SettledLine] = []
    for i, ln in enumerate(received.lines):
        sold = new.line(ln.line_id)
        if sold is None:  # pragma: no cover - a requested line shipped, so it is a line of the order
            continue
        location = received.warehouse if ln.disposition == "sellable" else quarantine(received.warehouse)
        document = f"{received.return_id}.{i}"
        commands.append(
            Return(
                command_id=return_id(new.tenant, ln.line_id, document),
                tenant=new.tenant,
                sku=sold.sku,
                origin=stamp.origin,
                seq=stamp.seq(i),
                ts=now,
                warehouse=location,
                quantity=ln.quantity,
                order_id=new.order_id,
                line_id=ln.line_id,
                document_id=document,
            )
        )
        settled.append(
            SettledLine(
                line_id=ln.line_id,
                sku=sold.sku,
                quantity=ln.quantity,
                disposition=ln.disposition,
                location=location,
                refund_fen=sold.paid_fen * ln.quantity // sold.quantity,
            )
        )
    refund = sum(s.refund_fen for s in settled)
    record = ReturnSettled(
        return_id=received.return_id,
        tenant=new.tenant,
        order_id=new.order_id,
        warehouse=received.warehouse,
        lines=settled,
        refund_fen=refund,
        ts=now,
    )
    detail = ", ".join(f"{s.line_id}×{s.quantity} {s.disposition}" for s in settled)
    outputs: list[Any] = [
        *commands,
        record,
        _progress(new, ProgressEvent.RETURN_RECEIVED, now, received.return_id, detail),
        _notify(new, "refunded", now, received.return_id, refund_fen=str(refund)),
    ]
    return Step(new, True, outputs, note="return_received")


# -- store pickup and counter sales ---------------------------------------------------------------------------
NO_SECRET = "no pickup code was issued: OMS_PICKUP_SECRET was not set when it was ready"


def on_pickup_ready(
    state: AftersalesState | None, ready: PickupReady, secret: bytes | None, hold_ms: int, stamp: Stamp, now: int
) -> Step:
    """A pickup (or counter) order reserved in its store. Without a ``secret`` no code is issued: the buyer is
    not told one, every claim is refused and the pickup expires (a counter sale needs no code)."""
    if state is None:
        return Step(None, note="unknown_order")
    if state.pickup is not None:
        return Step(state, note="duplicate_pickup_ready")
    new = _copy(state)
    new.pickup = PickupState(
        store=ready.store,
        lines=[(ln.line_id, ln.sku, ln.quantity) for ln in ready.lines],
        code=pickup_code(secret, new.tenant, new.order_id) if secret else "",
        reply_to=ready.reply_to,
        ready_at=now,
        expires_at=now + hold_ms,
    )
    if new.delivery == "counter":  # sold at the counter: handed over as it is reserved
        return _hand_over(new, stamp, now, "counter")
    if not new.pickup.code:
        detail = f"{ready.store}; {NO_SECRET}"
        return Step(new, True, [_progress(new, ProgressEvent.PICKUP_READY, now, "ready", detail)], note="no_code")
    outputs = [
        _progress(new, ProgressEvent.PICKUP_READY, now, "ready", ready.store),
        _notify(new, "pickup_ready", now, "ready", store=ready.store, code=new.pickup.code),
    ]
    return Step(new, True, outputs, note="pickup_ready")


def on_pickup_claim(
    state: AftersalesState | None, claim: PickupClaim, secret: bytes | None, stamp: Stamp, now: int
) -> Step:
    """A buyer at a store with a code (``now``: the claim's record time). The checks that follow from the claim
    alone and from what never changes again come first, so a claim sent again gets the answer it got the first
    time; a claim that changed the state (a wrong code counted, the goods taken) has its answer kept by id."""
    order = claim.order_id
    if state is None or state.pickup is None:
        return Step(state, refused=("pickup_refused", f"{order} has no pickup waiting"))
    pickup = state.pickup
    cid = claim.claim_id or claim_key(secret or b"", claim.tenant, order, claim.store, claim.code)
    if cid in pickup.answers:  # the same claim again (a client's retry, a redelivery): its first answer
        first = pickup.answers[cid]
        return Step(state, note="duplicate_pickup_claim", refused=("pickup_refused", first) if first else None)
    if claim.store is None:
        return Step(state, refused=("pickup_refused", f"{order}: a claim must name the store handing it over"))
    if claim.store != pickup.store:
        return Step(state, refused=("pickup_refused", f"{order} waits in {pickup.store}, not {claim.store}"))
    if pickup.status == "claimed":
        return Step(state, refused=("pickup_refused", f"{order} was already handed over (another claim)"))
    if pickup.status == "expired" or now >= pickup.expires_at:
        return Step(state, refused=("pickup_refused", f"{order}: the pickup expired"))
    if not pickup.code:
        return Step(state, refused=("pickup_refused", f"{order}: {NO_SECRET}"))
    if pickup.locked:
        detail = f"{order}: locked after {PICKUP_ATTEMPTS} wrong pickup codes"
        return Step(state, note="pickup_locked", refused=("pickup_refused", detail))
    new = _copy(state)
    assert new.pickup is not None
    if not hmac.compare_digest(claim.code.encode(), pickup.code.encode()):
        new.pickup.wrong += 1
        detail = f"{order}: wrong pickup code ({new.pickup.wrong} of {PICKUP_ATTEMPTS})"
        if new.pickup.locked:
            detail += "; locked: every later claim is refused and the pickup expires"
        new.pickup.answers[cid] = detail
        return Step(new, True, note="pickup_wrong_code", refused=("pickup_refused", detail))
    new.pickup.answers[cid] = ""
    return _hand_over(new, stamp, now, claim.actor)


def _hand_over(new: AftersalesState, stamp: Stamp, now: int, actor: str) -> Step:
    pickup = new.pickup
    assert pickup is not None
    pickup.status = "claimed"
    issues = [
        Issue(
            command_id=issue_id(new.tenant, line),
            tenant=new.tenant,
            sku=sku,
            origin=stamp.origin,
            seq=stamp.seq(i),
            ts=now,
            order_id=new.order_id,
            line_id=line,
            shipment_id=f"pickup.{new.order_id}",
        )
        for i, (line, sku, _) in enumerate(pickup.lines)
    ]
    goods = GoodsIssued(
        issue_id=f"pickup.{new.order_id}",
        tenant=new.tenant,
        order_id=new.order_id,
        shipment_id=f"pickup.{new.order_id}",
        warehouse=pickup.store,
        lines=[
            PackedLine(order_id=new.order_id, line_id=line, sku=sku, units=units) for line, sku, units in pickup.lines
        ],
        waybills=[],
        ts=now,
    )
    for line, _, units in pickup.lines:
        new.shipped[line] = new.shipped.get(line, 0) + units
        new.warehouse_of[line] = pickup.store
    new.issues.append(goods.issue_id)
    new.delivered_at = now
    outputs: list[Any] = [
        *issues,
        goods,
        _progress(new, ProgressEvent.PICKED_UP, now, "claimed", f"{pickup.store} by {actor}"),
        _notify(new, "picked_up", now, "claimed", store=pickup.store),
    ]
    return Step(new, True, outputs, note="picked_up")


def on_pickup_due(state: AftersalesState | None, now: int) -> Step:
    """The deadline passed: an unclaimed pickup is cancelled (the order stage releases its reservations)."""
    if state is None or state.pickup is None or state.pickup.status != "ready" or now < state.pickup.expires_at:
        return Step(state, note="pickup_not_due")
    new = _copy(state)
    assert new.pickup is not None
    new.pickup.status = "expired"
    cancel = OperatorAction(
        action_id=f"pickup-expired.{new.order_id}",
        tenant=new.tenant,
        order_id=new.order_id,
        inbox_key=new.pickup.reply_to,
        action=OperatorActionKind.CANCEL,
        actor="pickup-expiry",
        note="pickup_expired",
        ts=now,
    )
    outputs = [
        cancel,
        _progress(new, ProgressEvent.PICKUP_EXPIRED, now, "expired", new.pickup.store),
        _notify(new, "pickup_expired", now, "expired", store=new.pickup.store),
    ]
    return Step(new, True, outputs, note="pickup_expired")
