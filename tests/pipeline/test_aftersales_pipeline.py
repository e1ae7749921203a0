"""After the goods leave, on the real broker: orders of five channels and three ways of delivery from acceptance
to delivered — a split order shipped in two parts, write-backs to platforms that refuse every other call (sent
again, acknowledged once), tracking events shuffled and duplicated by topic and by webhook, a return received
half sellable and half damaged, a store pickup claimed (after a wrong code), one left to expire, a counter sale,
and the labels printed — ending with every invariant (I1–I6, F1–F8, S1–S4, A1–A4) checked from the result
topics against what was sent. Then a pickup claim whose answer was lost and that the store's system sent again
(one hand-over, the same answer), and a return receipt into a warehouse that does not exist (refused, no stock
anywhere but where the goods left from)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import msgspec
import pytest

from agents.fulfilment.layout import generate_layout
from agents.fulfilment.picking import report
from agents.fulfilment.publish import publish_layouts
from agents.shipping.labels import print_labels
from engine.kafka.clients import read_topics
from schemas import wire
from schemas.aftersales import AftersalesRecord, PickupClaim, ProgressEvent, ReceivedLine, ReturnReceived
from schemas.deadletter import ReasonCode
from schemas.fulfilment import PickList, WavePolicy
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus, order_id
from schemas.shipping import CarrierEvent, TrackingStatus
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_channels_pipeline import auth
from tests.pipeline.test_fulfilment_pipeline import receipts
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.aftersales import PickupDesk
from workload.delivery import Credentials
from workload.generator import DAY_START_MS

pytestmark = pytest.mark.pipeline

SHANGHAI = Address(name="王五", phone="13800001234", province="上海市", city="上海市", street="南京西路 1 号")
S = TrackingStatus
JOURNEY = [S.PICKED_UP, S.IN_TRANSIT, S.OUT_FOR_DELIVERY, S.DELIVERED]


def order(channel: Channel, n: int, lines: list[tuple[str, int]], at: int, **changes: object) -> Order:
    shop = f"{channel.value}-1"
    base = Order(
        tenant="acme",
        order_id=order_id(channel, shop, f"as{n}"),
        channel=channel,
        shop_id=shop,
        platform_order_id=f"as{n}",
        status=OrderStatus.PAID,
        buyer=Buyer(id=f"buyer-{n}"),
        receiver=SHANGHAI,
        lines=[
            OrderLine(
                line_no=i + 1, sku=s, quantity=q, unit_price_fen=1_000, paid_fen=900 * q, platform_line_id=f"L{n}{i}"
            )
            for i, (s, q) in enumerate(lines)
        ],
        created_at=at,
        ingested_at=at,
        version=at,
    )
    return msgspec.structs.replace(base, **changes)


def test_orders_go_from_picked_to_delivered_returned_and_picked_up(
    pipeline: Pipeline, credentials: Credentials, tmp_path: Path
) -> None:
    waves = WavePolicy(group_by=["carrier"], release_count=50, release_after_s=1)
    layout = generate_layout("acme", ["WH-SH", "WH-BJ"], ["AF-A", "AF-B"], merge_window_s=1, waves=waves)
    publish_layouts(pipeline.settings, [layout], "test-layouts")
    stock = {("AF-A", "WH-SH"): 20, ("AF-B", "WH-BJ"): 10, ("AF-C", "STORE-1"): 5}
    pipeline.send_commands(receipts("acme", stock))
    pool = pipeline.start_workers(2, writeback_fail_every=2, pickup_hold_s=20, aftersales_tick_s=1.0)
    now = DAY_START_MS + 12 * 3_600_000
    split = order(Channel.TMALL, 1, [("AF-A", 1), ("AF-B", 2)], now)  # two warehouses: shipped in two parts
    returned = order(Channel.JD, 2, [("AF-A", 2)], now + 1)
    douyin = order(Channel.DOUYIN, 3, [("AF-A", 1)], now + 2)
    shopify = order(Channel.SHOPIFY, 4, [("AF-A", 1)], now + 3)
    web = order(Channel.WEB, 5, [("AF-A", 1)], now + 4)
    claimed = order(Channel.WEB, 6, [("AF-C", 1)], now + 5, delivery="pickup", pickup_store="STORE-1")
    unclaimed = order(Channel.WEB, 7, [("AF-C", 2)], now + 6, delivery="pickup", pickup_store="STORE-1")
    counter = order(Channel.POS, 8, [("AF-C", 1)], now + 7, delivery="counter", pickup_store="STORE-1")
    shipped_orders = [split, returned, douyin, shopify, web]
    pipeline.send_orders([*shipped_orders, claimed, unclaimed, counter])
    pipeline.wait_decisions(8, timeout_s=120, pool=pool)

    # -- the store: a pickup announced with its code, claimed after a wrong code; another left to expire --------
    def code_of(o: Order) -> str | None:
        for n in pipeline.outputs().notifications:
            if n.order_id == o.order_id and n.template == "pickup_ready":
                return n.params["code"]
        return None

    code = wait_for(lambda: code_of(claimed), 60, "the pickup code")
    assert code_of(unclaimed) is not None
    pickup_url = pipeline.api(f"/api/v1/acme/orders/{claimed.order_id}/pickup")
    wrong = "000000" if code != "000000" else "111111"
    pipeline.inputs.refused_requests[("pickup_claim", claimed.order_id)] = ReasonCode.PICKUP_REFUSED
    status, _ = http("POST", pickup_url, {"code": wrong, "store": "STORE-1"}, auth(credentials))
    assert status == 202  # taken; the order's single writer refuses it (dead letter pickup_refused)
    status, answer = http("POST", pickup_url, {"code": code, "store": "STORE-1"}, auth(credentials))
    assert status == 202, answer
    pipeline.inputs.pickup_claims.add(claimed.key)
    status, answer = http("POST", pickup_url, {"store": "STORE-1"}, auth(credentials))
    assert status == 422 and "code" in answer["message"]  # refused at the door

    # -- picking: every pick list confirmed as asked -----------------------------------------------------------
    ship_lines = {f"{o.order_id}#{ln.line_no}" for o in shipped_orders for ln in o.lines}
    confirmed: set[str] = set()

    def picked_everything() -> bool:
        lists: dict[str, PickList] = {p.pick_list_id: p for p in pipeline.outputs().pick_lists}
        fresh = [p for pid, p in sorted(lists.items()) if pid not in confirmed]
        for pick in fresh:
            confirmation = report(pick, DAY_START_MS)
            pipeline.inputs.picks.append(confirmation)
            pipeline.send(pipeline.topics.fulfilment_inbox, [confirmation])
            confirmed.add(pick.pick_list_id)
        return ship_lines <= {s.line_id for p in lists.values() for s in p.stops}

    wait_for(picked_everything, 120, "pick lists for every shipped line")

    def shipped() -> list | None:
        out = pipeline.outputs()
        got = {ln.line_id for s in out.shipped for p in s.parcels for ln in p.lines}
        return out.shipped if ship_lines <= got else None

    parcels = [p for s in wait_for(shipped, 120, "every line shipped") for p in s.parcels]

    # -- tracking: each parcel's journey, shuffled and partly sent twice, by topic and by webhook --------------
    rng = random.Random(7)
    events: list[CarrierEvent] = []
    for i, parcel in enumerate(sorted(parcels, key=lambda p: p.waybill)):
        steps = list(JOURNEY)
        if i == 0:
            steps.insert(2, S.EXCEPTION)  # a problem in transit, then it moves on
        for j, status in enumerate(steps):
            events.append(
                CarrierEvent(
                    tenant="acme",
                    carrier=parcel.carrier,
                    waybill=parcel.waybill,
                    event_id=f"{parcel.waybill}-e{j}",
                    status=status,
                    occurred_at=now + 60_000 * (j + 1),
                )
            )
    # The first parcel's trouble comes first and in order (an exception older than a later scan is stale):
    # picked up, in transit, exception; then everything, shuffled and half of it twice.
    early = [e for e in events if e.waybill == events[0].waybill][:3]
    assert early[-1].status is S.EXCEPTION
    pipeline.send_carrier_events(early)
    wait_for(
        lambda: any(p.event is ProgressEvent.EXCEPTION for p in pipeline.outputs().order_progress),
        60,
        "the exception recorded",
    )
    rng.shuffle(events)
    doubled = events + rng.sample(events, len(events) // 2)
    half = len(doubled) // 2
    pipeline.send_carrier_events(doubled[:half])
    body = [{k: v for k, v in wire.to_builtins(e).items() if k not in ("kind", "tenant")} for e in doubled[half:]]
    status, answer = http("POST", pipeline.api("/api/v1/acme/carrier-events"), body, auth(credentials))
    assert status == 202 and answer["accepted"] == len(body), answer
    pipeline.inputs.carrier_events.extend(doubled[half:])
    status, answer = http("POST", pipeline.api("/api/v1/acme/carrier-events"), [{"waybill": "X"}], auth(credentials))
    assert status == 422 and "event 0" in answer["message"]  # refused whole, at the door

    # -- a return: asked for by the API, received half sellable, half damaged; a receipt nobody asked for -------
    returns_url = pipeline.api(f"/api/v1/acme/orders/{returned.order_id}/returns")
    line = f"{returned.order_id}#1"
    status, answer = http(
        "POST", returns_url, {"return_id": "RMA-1", "lines": [{"line_id": line, "quantity": 2}]}, auth(credentials)
    )
    assert status == 202 and answer["return_id"] == "RMA-1", answer
    receipt = ReturnReceived(
        tenant="acme",
        order_id=returned.order_id,
        return_id="RMA-1",
        warehouse="WH-SH",
        lines=[
            ReceivedLine(line_id=line, quantity=1, disposition="sellable"),
            ReceivedLine(line_id=line, quantity=1, disposition="damaged"),
        ],
        ts=0,
    )
    body = {"warehouse": "WH-SH", "lines": [wire.to_builtins(ln) for ln in receipt.lines]}
    status, answer = http("POST", f"{returns_url}/RMA-1/receipt", body, auth(credentials))
    assert status == 202, answer
    pipeline.inputs.return_receipts.append(receipt)
    pipeline.inputs.refused_requests[("return_received", returned.order_id)] = ReasonCode.RETURN_INVALID
    status, _ = http("POST", f"{returns_url}/RMA-9/receipt", body, auth(credentials))
    assert status == 202  # taken; refused by the order's writer: RMA-9 was never requested

    # -- settled: delivered, written back, returned, picked up, expired ------------------------------------------
    wanted_delivered = {o.order_id for o in shipped_orders}
    seen: dict[str, object] = {}

    def settled() -> bool:
        out = pipeline.outputs()
        progress = {(p.order_id, p.event) for p in out.order_progress}
        delivered = {o for o, e in progress if e is ProgressEvent.DELIVERED}
        ended = {
            p.progress_id.split(".", 2)[-1]
            for p in out.order_progress
            if p.event in (ProgressEvent.WRITTEN_BACK, ProgressEvent.WRITEBACK_FAILED)
        }
        keys = {r.idempotency_key for r in out.writebacks}
        expired = any(c.order_id == unclaimed.order_id and c.reason == "pickup_expired" for c in out.cancellations)
        seen.update(delivered=sorted(wanted_delivered - delivered), writebacks=sorted(keys - ended), expired=expired)
        return (
            wanted_delivered <= delivered
            and bool(keys)
            and keys <= ended
            and (claimed.order_id, ProgressEvent.PICKED_UP) in progress
            and (returned.order_id, ProgressEvent.RETURN_RECEIVED) in progress
            and expired
        )

    try:
        wait_for(settled, 120, "delivered, written back, returned, picked up and expired")
    except AssertionError:
        pipeline.dump_logs()
        raise AssertionError(f"aftersales did not settle: {seen}") from None
    pipeline.inputs.fulfilment_complete = True
    pipeline.inputs.aftersales_settled = True
    pipeline.inputs.pickups_due = True
    verdict = assert_invariants(pipeline)
    out = pipeline.outputs()

    # The fault fired and overlapped the work: the platforms refused write-backs, which were sent again.
    retried = {r.idempotency_key for r in out.writebacks if r.attempt > 1}
    acknowledged = {
        p.progress_id.split(".", 2)[-1] for p in out.order_progress if p.event is ProgressEvent.WRITTEN_BACK
    }
    assert retried & acknowledged, "no write-back was refused and then acknowledged"
    # Write-back in each platform's shape: the split order's two parts name their lines; web writes nothing.
    by_order: dict[str, list] = {}
    for r in {r.request_id: r for r in out.writebacks}.values():
        if r.attempt == 1:
            by_order.setdefault(r.order_id, []).append(r)
    assert sorted(r.request["sub_tid"] for r in by_order[split.order_id]) == ["L10", "L11"]
    assert [r.method for r in by_order[returned.order_id]] == ["jingdong.pop.order.shipment"]
    assert [r.request["order_id"] for r in by_order[douyin.order_id]] == ["as3"]
    assert by_order[shopify.order_id][0].request["fulfillment"]["line_items"] == [{"id": "L40", "quantity": 1}]
    assert web.order_id not in by_order
    details = sorted(
        p.detail for p in out.order_progress if p.order_id == split.order_id and p.event is ProgressEvent.SHIPPED
    )
    assert details == ["complete", "partial"]
    # Customers told, phone masked: shipped and delivered per order, the pickup code, the refund.
    templates = {(n.order_id, n.template) for n in out.notifications}
    assert {(o.order_id, t) for o in shipped_orders for t in ("shipped", "delivered")} <= templates
    assert all(n.to_masked == "138****1234" for n in out.notifications)
    assert (returned.order_id, "refunded") in templates and (unclaimed.order_id, "pickup_expired") in templates
    # The exception was recorded, and the parcel still reached its buyer.
    assert verdict.counts["tracking_exceptions"] == 1 and verdict.counts["orders_delivered"] == len(shipped_orders)
    # Stock: the sellable unit is back on the shelf, the damaged one in quarantine; the store handed over two
    # units (the claim, the counter sale) and released the expired pickup's two.
    levels = verdict.counts["final_levels"]
    assert levels["acme:AF-A"]["WH-SH/quarantine"] == [1, 0]
    assert levels["acme:AF-A"]["WH-SH"] == [20 - 6 + 1, 0]
    assert levels["acme:AF-C"] == {"STORE-1": [3, 0]}
    (settled_return,) = out.returns_settled
    assert settled_return.refund_fen == 1_800 and [s.location for s in settled_return.lines] == [
        "WH-SH",
        "WH-SH/quarantine",
    ]
    assert verdict.counts["pickups_claimed"] == 1 and verdict.counts["pickups_expired"] == 1
    assert verdict.counts["dead_letters"] == {"pickup_refused": 1, "return_invalid": 1}
    # Labels: one PDF per parcel of the split order's shipments, with its waybill, the receiver masked.
    split_shipments = {s.shipment_id for s in out.shipped if split.order_id in s.order_ids}
    pdfs = print_labels(pipeline.bootstrap, pipeline.topics, tmp_path, split_shipments)
    bills = {p.waybill for s in out.shipped if s.shipment_id in split_shipments for p in s.parcels}
    assert len(pdfs) == len(bills) == 2
    for pdf in pdfs:
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF") and any(b.encode() in data for b in bills) and b"13800001234" not in data


def test_a_retried_pickup_claim_hands_over_once_and_a_receipt_into_an_unknown_warehouse_moves_nothing(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    layout = generate_layout("acme", ["WH-SH"], ["AF-A", "AF-C"], merge_window_s=1)
    publish_layouts(pipeline.settings, [layout], "test-layouts")
    pipeline.send_commands(receipts("acme", {("AF-C", "STORE-1"): 5}))
    hold_s = 300  # nobody's deadline passes during the test
    pool = pipeline.start_workers(2, pickup_hold_s=hold_s, aftersales_tick_s=1.0)
    now = DAY_START_MS + 12 * 3_600_000
    pickup = order(Channel.WEB, 21, [("AF-C", 2)], now, delivery="pickup", pickup_store="STORE-1")
    pipeline.send_orders([pickup])
    pipeline.wait_decisions(1, timeout_s=120, pool=pool)

    def announced() -> object:
        notes = pipeline.outputs().notifications
        return next((n for n in notes if n.order_id == pickup.order_id and n.template == "pickup_ready"), None)

    note = wait_for(announced, 60, "the pickup code")

    # -- the claim: it reached the engine but its answer was lost (the record is on the inbox); the store's system
    # sends it again with the same id — first to a worker that is gone (no answer: sent again), then to a live
    # one — and once more to the other worker. One claim: one hand-over, the same answer every time.
    desk = PickupDesk(pipeline.settings.with_(pickup_hold_s=hold_s), pipeline.topics, credentials.tokens, 3, 1)
    claim_id = desk.claim_id(note)
    token_actor = f"token-{credentials.tokens['acme'][-4:]}"
    lost = PickupClaim(
        tenant="acme",
        order_id=pickup.order_id,
        code=note.params["code"],
        store="STORE-1",
        claim_id=claim_id,
        actor=token_actor,  # what the API writes for this caller
        ts=now,
    )
    pipeline.send(pipeline.topics.aftersales_inbox, [lost])
    desk.sent = 2  # the desk's first try goes to web port + 2, where no worker listens
    desk.claim(note)
    assert desk.claimed == {pickup.key} and desk.retries >= 1 and desk.failed == 0, (desk.retries, desk.refused)
    body = {"code": note.params["code"], "store": "STORE-1", "actor": "mallory"}
    headers = {**auth(credentials), "Idempotency-Key": claim_id}
    first = http("POST", pipeline.api(f"/api/v1/acme/orders/{pickup.order_id}/pickup", 0), body, headers)
    again = http("POST", pipeline.api(f"/api/v1/acme/orders/{pickup.order_id}/pickup", 1), body, headers)
    assert first == again == (202, {"order_id": pickup.order_id, "claim_id": claim_id}), (first, again)
    pipeline.inputs.pickup_claims |= desk.claimed
    status, answer = http("POST", pipeline.api(f"/api/v1/acme/orders/{pickup.order_id}/pickup"), {"code": "1"}, headers)
    assert status == 422 and "store" in answer["message"]  # a claim names its store

    # -- a return of one unit: a receipt into a warehouse that does not exist (taken, refused by the order's
    # writer), one into a quarantine location (refused at the door), then the receipt where the goods left from.
    returns_url = pipeline.api(f"/api/v1/acme/orders/{pickup.order_id}/returns")
    line = f"{pickup.order_id}#1"
    wait_for(
        lambda: any(
            p.order_id == pickup.order_id and p.event is ProgressEvent.PICKED_UP
            for p in pipeline.outputs().order_progress
        ),
        60,
        "the hand-over",
    )
    status, answer = http(
        "POST", returns_url, {"return_id": "RMA-P", "lines": [{"line_id": line, "quantity": 1}]}, auth(credentials)
    )
    assert status == 202, answer
    sellable = [{"line_id": line, "quantity": 1, "disposition": "sellable"}]
    pipeline.inputs.refused_requests[("return_received", pickup.order_id)] = ReasonCode.RETURN_INVALID
    ghost = {"warehouse": "WH-GHOST", "lines": sellable}
    status, answer = http("POST", f"{returns_url}/RMA-P/receipt", ghost, auth(credentials))
    assert status == 202, answer  # the API cannot know where the line left from; the order's writer does
    quarantined = {"warehouse": "STORE-1/quarantine", "lines": sellable}
    status, answer = http("POST", f"{returns_url}/RMA-P/receipt", quarantined, auth(credentials))
    assert status == 422 and "quarantine" in answer["message"], answer
    status, answer = http(
        "POST", f"{returns_url}/RMA-P/receipt", {"warehouse": "STORE-1", "lines": sellable}, auth(credentials)
    )
    assert status == 202, answer
    pipeline.inputs.return_receipts.append(
        ReturnReceived(
            tenant="acme",
            order_id=pickup.order_id,
            return_id="RMA-P",
            warehouse="STORE-1",
            lines=[ReceivedLine(line_id=line, quantity=1, disposition="sellable")],
            ts=0,
        )
    )

    def received() -> bool:
        out = pipeline.outputs()
        done = any(
            p.order_id == pickup.order_id and p.event is ProgressEvent.RETURN_RECEIVED for p in out.order_progress
        )
        return done and any(d.reason is ReasonCode.RETURN_INVALID for d in out.dead_letters)

    wait_for(received, 60, "the receipt into WH-GHOST refused and the one into STORE-1 received")
    pipeline.inputs.fulfilment_complete = True
    pipeline.inputs.aftersales_settled = True
    pipeline.inputs.pickups_due = True
    verdict = assert_invariants(pipeline)
    out = pipeline.outputs()

    # One hand-over for the claim sent four times, recorded as the caller the token names (not the body's actor).
    picked = [p for p in out.order_progress if p.order_id == pickup.order_id and p.event is ProgressEvent.PICKED_UP]
    assert len({p.progress_id for p in picked}) == 1 and picked[0].detail == f"STORE-1 by {token_actor}"
    assert len({g.issue_id for g in out.goods_issued if g.order_id == pickup.order_id}) == 1
    claims = []
    for m in read_topics(pipeline.bootstrap, [pipeline.topics.aftersales_inbox]):
        with contextlib.suppress(wire.WireError):
            record = wire.decode(m.value, AftersalesRecord)
            claims += [record] if isinstance(record, PickupClaim) else []
    assert len(claims) == 4 and {c.claim_id for c in claims} == {claim_id}  # sent four times: one claim
    assert {c.actor for c in claims} == {token_actor}  # the API wrote the token's caller, never the body's "mallory"
    assert not [d for d in out.dead_letters if d.reason is ReasonCode.PICKUP_REFUSED]
    # The ghost receipt moved nothing: the unit is back in the store only, and WH-GHOST has no stock at all.
    [refused] = [d for d in out.dead_letters if d.reason is ReasonCode.RETURN_INVALID]
    assert "left from STORE-1" in refused.detail and "WH-GHOST" in refused.detail
    assert verdict.counts["final_levels"]["acme:AF-C"] == {"STORE-1": [5 - 2 + 1, 0]}
    assert not any("WH-GHOST" in where for levels in verdict.counts["final_levels"].values() for where in levels)
    assert verdict.counts["pickups_claimed"] == 1 and verdict.counts["dead_letters"] == {"return_invalid": 1}
