"""Channels, the HTTP edge and review on the real broker, Redis and worker processes: webhooks, the API, holds,
amendments, cancellations, poison records, Redis restarting. Every test ends with the invariants checked from
the result topics against what was sent."""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import time
from pathlib import Path

import msgspec
import pytest

from engine.kafka.clients import Sender
from schemas.deadletter import DeadLetter, ReasonCode
from schemas.inventory import CommandKind, Receive, receive_id
from schemas.order import Address, Buyer, Channel, LineState, Order, OrderLine, OrderStatus, order_id
from schemas.review import CancellationKind, OperatorActionKind, OrderCancellation, Outcome, ReviewDecision
from schemas.saga import DecisionStatus, RejectReason
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.channels import channel_day
from workload.delivery import Credentials, deliver, sign
from workload.generator import Workload, WorkloadSpec

pytestmark = pytest.mark.pipeline
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def sent_order(
    channel: Channel,
    shop: str,
    platform_id: str,
    lines: list[tuple[str, int]],
    status: OrderStatus = OrderStatus.PAID,
    version: int = 1,
    closed: tuple[int, ...] = (),
) -> Order:
    """What a sample payload means, read from the sample by hand (the checker's truth, not the adapters')."""
    return Order(
        tenant="acme",
        order_id=order_id(channel, shop, platform_id),
        channel=channel,
        shop_id=shop,
        platform_order_id=platform_id,
        status=status,
        buyer=Buyer(id="x"),
        receiver=Address(name="x"),
        lines=[
            OrderLine(
                line_no=i + 1,
                sku=sku,
                quantity=q,
                unit_price_fen=1,
                status=LineState.CANCELLED if i + 1 in closed else LineState.ACTIVE,
            )
            for i, (sku, q) in enumerate(lines)
        ],
        created_at=1,
        ingested_at=1,
        version=version,
    )


def stock(p: Pipeline, tenant: str, *skus: str, qty: int = 10) -> None:
    p.send_commands(
        Receive(
            command_id=receive_id(tenant, sku, "WH-A", "d1"),
            tenant=tenant,
            sku=sku,
            origin="test-loader",
            seq=i + 1,
            ts=1,
            warehouse="WH-A",
            quantity=qty,
            document_id="d1",
        )
        for i, sku in enumerate(skus)
    )


def auth(creds: Credentials, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {creds.tokens[tenant]}"}


def shopify_headers(creds: Credentials, body: bytes, webhook: str) -> dict[str, str]:
    domain, secret = creds.shopify[("acme", "s1")]
    return {
        "X-Shopify-Shop-Domain": domain,
        "X-Shopify-Hmac-SHA256": sign(secret, body),
        "X-Shopify-Webhook-Id": webhook,
    }


def test_the_same_webhook_three_times_is_one_order(pipeline: Pipeline, credentials: Credentials) -> None:
    stock(pipeline, "acme", "SKU-00002")
    pipeline.start_workers(2)
    body = json.dumps(sample("shopify_order.json")).encode()
    headers = shopify_headers(credentials, body, "wh-1")
    answers = [http("POST", pipeline.api("/webhooks/shopify/orders", i % 2), body, headers) for i in range(3)]
    assert [a[1]["status"] for a in answers] == ["accepted", "duplicate", "duplicate"]
    assert {a[0] for a in answers} == {202} and {a[1]["order_id"] for a in answers} == {"shopify-s1-5678901234567"}
    # the same payload three times on the raw topic (no Redis in that path): the stream dedupes by version
    for _ in range(3):
        pipeline.send(pipeline.topics.raw[Channel.SHOPIFY], [body], key="acme:s9:5678901234567")
    pipeline.inputs.add_orders(
        [
            sent_order(Channel.SHOPIFY, "s1", "5678901234567", [("SKU-00002", 2)]),
            sent_order(Channel.SHOPIFY, "s9", "5678901234567", [("SKU-00002", 2)]),
        ]
    )
    pipeline.wait_decisions(2)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["decisions"] == 2 and verdict.counts["decision_copies"] == 2


def test_a_webhook_batch_of_distinct_orders_is_every_order(pipeline: Pipeline, credentials: Credentials) -> None:
    """One signed delivery carrying three orders: the dedupe key names an order, never the delivery."""
    stock(pipeline, "acme", "SKU-00002")
    pipeline.start_workers(2)
    base = sample("shopify_order.json")
    batch = [base | {"id": 5678901234567 + i} for i in range(3)]
    body = json.dumps(batch).encode()
    status, answer = http(
        "POST", pipeline.api("/webhooks/shopify/orders"), body, shopify_headers(credentials, body, "wh-2")
    )
    assert status == 202 and (answer["accepted"], answer["duplicates"]) == (3, 0)
    again = http("POST", pipeline.api("/webhooks/shopify/orders", 1), body, shopify_headers(credentials, body, "wh-2"))
    assert again[1]["duplicates"] == 3, "the redelivered batch is recognised order by order"
    pipeline.inputs.add_orders(
        sent_order(Channel.SHOPIFY, "s1", str(5678901234567 + i), [("SKU-00002", 2)]) for i in range(3)
    )
    pipeline.wait_decisions(3)
    assert assert_invariants(pipeline).counts["accepted"] == 3


def test_bad_requests_are_refused_with_a_reason(pipeline: Pipeline, credentials: Credentials) -> None:
    pipeline.start_workers(1, topics=[pipeline.topics.order_inbox])
    body = json.dumps(sample("shopify_order.json")).encode()
    domain, _ = credentials.shopify[("acme", "s1")]
    headers = {"X-Shopify-Shop-Domain": domain, "X-Shopify-Hmac-SHA256": sign("wrong", body)}
    status, answer = http("POST", pipeline.api("/webhooks/shopify/orders"), body, headers)
    assert (status, answer["error"]) == (401, "bad_signature")
    url = pipeline.api("/api/v1/acme/jd/s1/orders")
    jd = sample("jd_order.json")
    assert http("POST", url, jd)[0] == 401
    assert http("POST", url, jd, auth(credentials, "blue"))[1]["error"] == "tenant_mismatch"
    assert http("POST", url, b"{", auth(credentials))[1]["error"] == "malformed_json"
    assert http("POST", url, b"x" * 2_000_000, auth(credentials))[0] == 413
    assert http("POST", url, jd, {**auth(credentials), "Content-Type": "text/plain"})[0] == 415
    status, answer = http("POST", pipeline.api("/api/v1/acme/jd/a%2F..%2F..%2Fb/orders"), jd, auth(credentials))
    assert status in (400, 404) and answer.get("error", "bad_path") in ("bad_path", "unknown_channel")
    status, answer = http("POST", pipeline.api("/api/v1/acme/jd/a..b/orders"), jd, auth(credentials))
    assert (status, answer["error"]) == (400, "bad_path")
    bad = jd | {"itemInfoList": [jd["itemInfoList"][0] | {"itemTotal": "0"}]}
    status, answer = http("POST", url, bad, auth(credentials))
    assert status == 422 and answer["error"] == "invalid_record" and "quantity" in answer["message"]
    pipeline.publish_catalog({"acme": {"SKU-00003"}})
    unknown = jd | {"itemInfoList": [jd["itemInfoList"][0] | {"outerSkuId": "SKU-NOPE"}]}
    status, answer = http("POST", url, unknown, auth(credentials))
    assert status == 422 and answer["error"] == "unknown_sku"
    status, answer = http("POST", url, {"orders": [jd, unknown]}, auth(credentials))
    assert status == 207 and [r["status"] for r in answer["results"]] == ["accepted", "rejected"]
    pipeline.inputs.add_orders([sent_order(Channel.JD, "s1", "301234567890", [("SKU-00003", 2)])])
    stock(pipeline, "acme", "SKU-00003")
    pipeline.wait_decisions(1)
    # checked with the worker running: a stopped one may leave the ticks it wrote as it stopped unread, and the
    # idle check would wait for them for ever
    assert_invariants(pipeline)


def _post_in_pieces(port: int, path: str, body: bytes, headers: dict[str, str], pieces: int, gap_s: float) -> int:
    """An HTTP/1.1 POST whose body reaches the server in ``pieces`` TCP segments ``gap_s`` apart."""
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        size = -(-len(body) // pieces)
        for i in range(0, len(body), size):
            s.sendall(body[i : i + size])
            time.sleep(gap_s)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_a_body_that_arrives_in_pieces_is_read_to_its_end(pipeline: Pipeline, credentials: Credentials) -> None:
    stock(pipeline, "acme", "SKU-00001", "SKU-00005", qty=2000)
    pipeline.start_workers(2)
    headers = {**auth(credentials), "Content-Type": "application/json"}
    one = json.dumps(sample("web_order.json")).encode()
    assert _post_in_pieces(pipeline.settings.web_port, "/api/v1/acme/web/s1/orders", one, headers, 2, 0.3) == 202
    many = [sample("web_order.json") | {"order_no": f"W2026111199{i:04d}"} for i in range(500)]
    body = json.dumps(many).encode()
    assert _post_in_pieces(pipeline.settings.web_port, "/api/v1/acme/web/s1/orders", body, headers, 8, 0.05) == 202
    pipeline.inputs.add_orders(
        sent_order(Channel.WEB, "s1", number, [("SKU-00001", 1), ("SKU-00005", 3)])
        for number in ["W202611110001", *(o["order_no"] for o in many)]
    )
    pipeline.wait_decisions(501)
    assert assert_invariants(pipeline).counts["accepted"] == 501


def put_rules(pipeline: Pipeline, credentials: Credentials, rules: list[dict], version: int = 2) -> None:
    body = {"tenant": "acme", "version": version, "rules": rules}
    assert http("PUT", pipeline.api("/api/v1/acme/rules"), body, auth(credentials))[0] == 202
    wait_for(
        lambda: (
            http("GET", pipeline.api("/api/v1/acme/rules", 1), None, auth(credentials))[1].get("version") == version
        ),
        what="the rules on every worker",
    )
    pipeline.inputs.rules = True


BIG = {"kind": "amount_over", "id": "big", "threshold_fen": 10000, "action": "hold", "reason": "amount_over_limit"}


def holds(pipeline: Pipeline, credentials: Credentials, count: int, index: int = 0) -> list[dict]:
    found = wait_for(
        lambda: (
            (h := http("GET", pipeline.api("/api/v1/acme/holds", index), None, auth(credentials)))[0] == 200
            and h[1]["count"] == count
            and h[1]
        ),
        what=f"{count} held orders",
    )
    return found["holds"]


def test_hold_then_release_and_reject_through_the_api(pipeline: Pipeline, credentials: Credentials) -> None:
    stock(pipeline, "acme", "SKU-00001", "SKU-00005")
    pipeline.start_workers(2)
    put_rules(pipeline, credentials, [BIG])
    web = sample("web_order.json")
    second = web | {"order_no": "W202611110002"}
    status, answer = http("POST", pipeline.api("/api/v1/acme/web/s1/orders"), [web, second], auth(credentials))
    assert status == 202 and answer["accepted"] == 2
    pipeline.inputs.add_orders(
        sent_order(Channel.WEB, "s1", n, [("SKU-00001", 1), ("SKU-00005", 3)])
        for n in ("W202611110001", "W202611110002")
    )
    listed = holds(pipeline, credentials, 2)
    assert {h["reasons"][0] for h in listed} == {"amount_over_limit"} and {h["rules"][0] for h in listed} == {"big"}
    url = pipeline.api("/api/v1/acme/holds/web-s1-W202611110001/release")
    assert http("POST", url, {"actor": "alice"}, auth(credentials))[0] == 202
    url = pipeline.api("/api/v1/acme/holds/web-s1-W202611110002/reject", 1)
    assert http("POST", url, {"actor": "bob", "note": "looks fraudulent"}, auth(credentials))[0] == 202
    pipeline.inputs.add_operator("acme:web-s1-W202611110001", OperatorActionKind.RELEASE)
    pipeline.inputs.add_operator("acme:web-s1-W202611110002", OperatorActionKind.REJECT)
    pipeline.wait_decisions(2)
    decisions = pipeline.decisions()
    assert decisions["acme:web-s1-W202611110001"].status is DecisionStatus.ACCEPTED
    assert decisions["acme:web-s1-W202611110002"].reason is RejectReason.REVIEW
    holds(pipeline, credentials, 0)
    gone = pipeline.api("/api/v1/acme/holds/web-s1-W202611110002/release")
    assert http("POST", gone, None, auth(credentials))[0] == 404
    outcomes = {
        (r.order_id, r.outcome, r.actor) for r in pipeline.read(pipeline.topics.review_decisions, ReviewDecision)
    }
    assert ("web-s1-W202611110001", Outcome.RELEASED, "alice") in outcomes
    assert ("web-s1-W202611110002", Outcome.REJECTED, "bob") in outcomes
    assert_invariants(pipeline)


def test_a_change_the_engine_cannot_apply_after_approval_is_held_not_ignored(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    stock(pipeline, "acme", "SKU-00001", "SKU-00005", "SKU-00009")
    pipeline.start_workers(2)
    web = sample("web_order.json")
    url = pipeline.api("/api/v1/acme/web/s1/orders")
    assert http("POST", url, web, auth(credentials))[0] == 202
    pipeline.wait_decisions(1)
    amended = copy.deepcopy(web)
    amended["updated_at"] = "2026-11-11T00:09:00+08:00"
    amended["lines"][1]["sku"] = "SKU-00009"  # the buyer swapped an item after the stock was reserved
    assert http("POST", url, amended, auth(credentials))[1]["status"] == "accepted"
    [held] = holds(pipeline, credentials, 1)
    assert (held["kind"], held["reasons"]) == ("amendment", ["order_amended"])
    release = pipeline.api("/api/v1/acme/holds/web-s1-W202611110001/release", 1)
    assert http("POST", release, {"actor": "carol", "note": "ship as approved"}, auth(credentials))[0] == 202
    holds(pipeline, credentials, 0)
    pipeline.inputs.add_orders([sent_order(Channel.WEB, "s1", "W202611110001", [("SKU-00001", 1), ("SKU-00005", 3)])])
    pipeline.inputs.rules = True  # held by the engine's own amendment rule
    verdict = assert_invariants(pipeline)
    assert verdict.counts["accepted"] == 1
    outcomes = [r.outcome for r in pipeline.read(pipeline.topics.review_decisions, ReviewDecision)]
    assert outcomes == [Outcome.APPROVED, Outcome.HELD, Outcome.RELEASED]


def test_cancellation_before_shipment_releases_the_stock(pipeline: Pipeline) -> None:
    stock(pipeline, "acme", "SKU-00012", "SKU-00031")
    pipeline.start_workers(2)
    trade = sample("tmall_trade.json")
    raw = pipeline.topics.raw[Channel.TMALL]
    key = "acme:flagship:3459812345678901234"
    lines = [("SKU-00012", 2), ("SKU-00031", 1)]
    pipeline.send(raw, [json.dumps(trade).encode()], key=key)
    pipeline.wait_decisions(1)
    assert pipeline.decisions()["acme:tmall-flagship-3459812345678901234"].status is DecisionStatus.ACCEPTED
    # the buyer's refund of the socks is agreed before shipment: that line's reservation is released
    trade["modified"] = "2026-11-11 00:05:00"
    trade["orders"]["order"][1]["refund_status"] = "SUCCESS"
    pipeline.send(raw, [json.dumps(trade).encode()], key=key)
    wait_for(lambda: pipeline.read(pipeline.topics.order_cancellations, OrderCancellation), what="line cancellation")
    # then the whole trade is closed
    trade["modified"] = "2026-11-11 00:10:00"
    trade["status"] = "TRADE_CLOSED"
    pipeline.send(raw, [json.dumps(trade).encode()], key=key)
    wait_for(lambda: len(pipeline.read(pipeline.topics.order_cancellations, OrderCancellation)) == 2, what="cancel")
    pipeline.inputs.add_orders(
        [
            sent_order(Channel.TMALL, "flagship", "3459812345678901234", lines, version=1),
            sent_order(Channel.TMALL, "flagship", "3459812345678901234", lines, version=2, closed=(2,)),
            sent_order(Channel.TMALL, "flagship", "3459812345678901234", lines, OrderStatus.CANCELLED, 3),
        ]
    )
    verdict = assert_invariants(pipeline)
    kinds = [c.kind for c in pipeline.read(pipeline.topics.order_cancellations, OrderCancellation)]
    assert kinds == [CancellationKind.LINES, CancellationKind.ORDER]
    assert verdict.counts["final_levels"]["acme:SKU-00012"] == {"WH-A": [10, 0]}
    assert verdict.counts["final_levels"]["acme:SKU-00031"] == {"WH-A": [10, 0]}
    releases = [e for e in pipeline.outputs().stock_events if e.kind is CommandKind.RELEASE]
    assert len(releases) == 2


def test_a_poisoned_raw_record_is_dead_lettered_and_the_next_is_processed(pipeline: Pipeline) -> None:
    stock(pipeline, "acme", "SKU-00003")
    pipeline.start_workers(2)
    raw = pipeline.topics.raw[Channel.JD]
    key = "acme:s1:301234567890"
    poison = b'{"orderId": "301234567890", "itemInfoList": [{"itemTotal": {"nested": true}}'
    pipeline.send_bad(raw, key, poison)
    pipeline.send(raw, [json.dumps(sample("jd_order.json")).encode()], key=key)
    pipeline.send_bad(raw, "no-colons-here", b"\xff\xfe not json")
    pipeline.inputs.add_orders([sent_order(Channel.JD, "s1", "301234567890", [("SKU-00003", 2)])])
    pipeline.wait_decisions(1)
    verdict = assert_invariants(pipeline)
    letters = pipeline.read(pipeline.topics.dead_letters, DeadLetter)
    by_reason = {d.reason: d for d in letters}
    assert set(by_reason) == {ReasonCode.MALFORMED_JSON, ReasonCode.BAD_KEY}
    poisoned = by_reason[ReasonCode.MALFORMED_JSON]
    assert poisoned.original_value == poison and poisoned.source_topic == raw and poisoned.stage == "ingest"
    assert poisoned.tenant == "acme" and poisoned.source_offset >= 0
    assert verdict.counts["accepted"] == 1


@pytest.mark.own_servers("redis")  # it stops Redis: one of its own, not the one the tests beside it use
def test_redis_restarting_delays_the_holds_workflow_but_does_not_stop_it(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    stock(pipeline, "acme", "SKU-00001", "SKU-00005")
    pipeline.start_workers(2)
    put_rules(pipeline, credentials, [BIG])
    orders = [sample("web_order.json") | {"order_no": f"W20261111010{i}"} for i in range(3)]
    assert http("POST", pipeline.api("/api/v1/acme/web/s1/orders"), orders, auth(credentials))[0] == 202
    pipeline.inputs.add_orders(
        sent_order(Channel.WEB, "s1", o["order_no"], [("SKU-00001", 1), ("SKU-00005", 3)]) for o in orders
    )
    holds(pipeline, credentials, 3)
    redis = pipeline.own_servers["redis"]
    assert redis.stop(), "the test's own Redis was stopped"
    status, answer = http("GET", pipeline.api("/api/v1/acme/holds"), None, auth(credentials))
    assert (status, answer["error"]) == (503, "unavailable")
    redis.start()  # empty: the holds list is gone with it
    listed = holds(pipeline, credentials, 3)  # rebuilt from the engine's state
    for hold in listed:
        url = pipeline.api(f"/api/v1/acme/holds/{hold['order_id']}/release")
        assert http("POST", url, {"actor": "dana"}, auth(credentials))[0] == 202
        pipeline.inputs.add_operator(f"acme:{hold['order_id']}", OperatorActionKind.RELEASE)
    pipeline.wait_decisions(3)
    assert assert_invariants(pipeline).counts["accepted"] == 3


def test_the_generated_day_through_every_route(pipeline: Pipeline, credentials: Credentials) -> None:
    """A small channel day (duplicates, unpaid, cancellations, refunds, locks, bad payloads) end to end."""
    workload = Workload(WorkloadSpec(orders=600, seed=8, skus=150))
    pipeline.publish_catalog(workload.catalog())
    pipeline.start_workers(2)
    pipeline.load(workload)
    pipeline.wait_idle()
    deliveries = list(channel_day(workload.orders(), 8))
    sent = asyncio.run(deliver(pipeline.settings, pipeline.topics, deliveries, credentials, 2))
    assert sent.by_route["kafka"] and sent.by_route["http"] and sent.by_route["webhook"]
    pipeline.inputs.add_orders(d.intent for i, d in enumerate(deliveries) if i in sent.taken and d.intent is not None)
    pipeline.inputs.bad_records = {d.body for d in deliveries if d.kind == "bad" and d.via == "kafka"}
    wait_for(lambda: resolved(pipeline) >= len(pipeline.inputs.orders), timeout_s=240, what="every order resolved")
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == len(pipeline.inputs.orders)
    assert verdict.counts["decisions"] + sum(verdict.counts["open"].values()) == verdict.counts["orders"]
    assert verdict.counts["dead_letters"] and sent.http_refused  # the bad payloads were classified on both routes


def resolved(p: Pipeline) -> int:
    """Orders decided, plus orders whose latest review outcome is an open state."""
    decided = set(p.decisions())
    last: dict[str, ReviewDecision] = {}
    for r in p.read(p.topics.review_decisions, ReviewDecision):
        last[r.key] = r
    open_ = {k for k, r in last.items() if r.outcome in (Outcome.HELD, Outcome.AWAITING_PAYMENT)}
    return len(decided | open_)


def test_raw_records_on_the_wrong_partition_are_dead_lettered(pipeline: Pipeline) -> None:
    """A producer without murmur2 (or a wrong key) would give one platform order two writers."""
    pipeline.start_workers(2)
    raw = pipeline.topics.raw[Channel.JD]
    body = json.dumps(sample("jd_order.json")).encode()
    sender = Sender(pipeline.bootstrap)
    key = "acme:s1:301234567890"
    from engine.kafka.clients import partition_for

    wrong = (partition_for(key, pipeline.settings.partitions) + 1) % pipeline.settings.partitions
    sender.send(raw, key, body, partition=wrong)
    sender.flush()
    pipeline.inputs.bad_records.add(body)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["dead_letters"] == {"misrouted": 1}
    assert msgspec.json.decode(body)["orderId"] == "301234567890"
