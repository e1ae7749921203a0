"""Channels and review on the real broker, Redis and worker processes: webhooks, the API, holds,
cancellations, poison records. Every test ends with I1–I4 checked from the result topics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from engine.delivery import Credentials, sign
from engine.workload import Workload, WorkloadSpec

from schemas.deadletter import DeadLetter, ReasonCode
from schemas.inventory import CommandKind, Receive, receive_id
from schemas.order import Channel
from schemas.review import CancellationKind, OrderCancellation, Outcome, ReviewDecision
from schemas.saga import DecisionStatus, RejectReason
from tests.pipeline.harness import Pipeline, http
from tests.pipeline.test_reservation_pipeline import assert_invariants

pytestmark = pytest.mark.pipeline
SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def sample(name: str) -> dict:
    return json.loads((SAMPLES / name).read_text())


def stock(p: Pipeline, tenant: str, *skus: str, qty: int = 10) -> None:
    p.send(
        p.topics.inventory_commands,
        [
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
        ],
    )


def auth(creds: Credentials, tenant: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {creds.tokens[tenant]}"}


def wait_for(predicate, timeout_s: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_same_webhook_three_times_is_one_order(pipeline: Pipeline, credentials: Credentials) -> None:
    stock(pipeline, "acme", "SKU-00002")
    pipeline.start_workers(2)
    body = json.dumps(sample("shopify_order.json")).encode()
    domain, secret = credentials.shopify[("acme", "s1")]
    headers = {
        "X-Shopify-Shop-Domain": domain,
        "X-Shopify-Hmac-SHA256": sign(secret, body),
        "X-Shopify-Webhook-Id": "wh-1",
    }
    answers = [http("POST", pipeline.api("/webhooks/shopify/orders", i % 2), body, headers) for i in range(3)]
    assert [a[1]["status"] for a in answers] == ["accepted", "duplicate", "duplicate"]
    assert {a[0] for a in answers} == {202} and {a[1]["order_id"] for a in answers} == {"shopify-s1-5678901234567"}
    # the same payload three times on the raw topic (no Redis in that path): the stream dedupes by version
    for _ in range(3):
        pipeline.send(pipeline.topics.raw[Channel.SHOPIFY], [body], key="acme:s9:5678901234567")
    pipeline.wait_decisions(2)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == 2 and verdict.counts["decisions"] == 2
    reviews = pipeline.read(pipeline.topics.review_decisions, ReviewDecision)
    assert sorted(r.order_id for r in reviews) == ["shopify-s1-5678901234567", "shopify-s9-5678901234567"]


def test_a_bad_signature_and_bad_credentials_are_refused(pipeline: Pipeline, credentials: Credentials) -> None:
    pipeline.start_workers(1, topics=[pipeline.topics.orders])
    body = json.dumps(sample("shopify_order.json")).encode()
    domain, _ = credentials.shopify[("acme", "s1")]
    status, answer = http(
        "POST",
        pipeline.api("/webhooks/shopify/orders"),
        body,
        {"X-Shopify-Shop-Domain": domain, "X-Shopify-Hmac-SHA256": sign("wrong", body)},
    )
    assert (status, answer["error"]) == (401, "bad_signature")
    url = pipeline.api("/api/v1/acme/jd/s1/orders")
    jd = sample("jd_order.json")
    assert http("POST", url, jd)[0] == 401
    assert http("POST", url, jd, auth(credentials, "blue"))[1]["error"] == "tenant_mismatch"
    assert http("POST", url, b"{", auth(credentials))[1]["error"] == "malformed_json"
    assert http("POST", url, b"x" * 2_000_000, auth(credentials))[0] == 413
    assert http("POST", url, jd, {**auth(credentials), "Content-Type": "text/plain"})[0] == 415
    bad = jd | {"itemInfoList": [jd["itemInfoList"][0] | {"itemTotal": "0"}]}
    status, answer = http("POST", url, bad, auth(credentials))
    assert status == 422 and answer["error"] == "invalid_record" and "quantity" in answer["message"]
    pipeline.publish_catalog({"acme": {"SKU-00003"}})
    unknown = jd | {"itemInfoList": [jd["itemInfoList"][0] | {"outerSkuId": "SKU-NOPE"}]}
    status, answer = http("POST", url, unknown, auth(credentials))
    assert status == 422 and answer["error"] == "unknown_sku"
    status, answer = http("POST", url, {"orders": [jd, unknown]}, auth(credentials))
    assert status == 207 and [r["status"] for r in answer["results"]] == ["accepted", "rejected"]
    assert_invariants(pipeline)


def test_hold_then_release_and_reject_through_the_api(pipeline: Pipeline, credentials: Credentials) -> None:
    stock(pipeline, "acme", "SKU-00001", "SKU-00005", "SKU-00003")
    pipeline.start_workers(2)
    rules = {
        "tenant": "acme",
        "version": 2,
        "rules": [
            {
                "kind": "amount_over",
                "id": "big",
                "threshold_fen": 10000,
                "action": "hold",
                "reason": "amount_over_limit",
            }
        ],
    }
    assert http("PUT", pipeline.api("/api/v1/acme/rules"), rules, auth(credentials))[0] == 202
    wait_for(
        lambda: http("GET", pipeline.api("/api/v1/acme/rules", 1), None, auth(credentials))[1].get("version") == 2,
        what="rules on every worker",
    )
    web = sample("web_order.json")
    second = web | {"order_no": "W202611110002"}
    status, answer = http("POST", pipeline.api("/api/v1/acme/web/s1/orders"), [web, second], auth(credentials))
    assert status == 202 and answer["accepted"] == 2
    holds = wait_for(
        lambda: (h := http("GET", pipeline.api("/api/v1/acme/holds"), None, auth(credentials))[1])["count"] == 2 and h,
        what="two held orders",
    )
    assert {h["reasons"][0] for h in holds["holds"]} == {"amount_over_limit"} and {
        h["rules"][0] for h in holds["holds"]
    } == {"big"}
    url = pipeline.api("/api/v1/acme/holds/web-s1-W202611110001/release")
    assert http("POST", url, {"actor": "alice"}, auth(credentials))[0] == 202
    url = pipeline.api("/api/v1/acme/holds/web-s1-W202611110002/reject", 1)
    assert http("POST", url, {"actor": "bob", "note": "looks fraudulent"}, auth(credentials))[0] == 202
    pipeline.wait_decisions(2)
    decisions = pipeline.decisions()
    assert decisions["acme:web-s1-W202611110001"].status is DecisionStatus.ACCEPTED
    assert decisions["acme:web-s1-W202611110002"].reason is RejectReason.REVIEW
    assert (
        http("POST", pipeline.api("/api/v1/acme/holds/web-s1-W202611110002/release"), None, auth(credentials))[0] == 404
    )
    outcomes = {
        (r.order_id, r.outcome, r.actor) for r in pipeline.read(pipeline.topics.review_decisions, ReviewDecision)
    }
    assert ("web-s1-W202611110001", Outcome.RELEASED, "alice") in outcomes
    assert ("web-s1-W202611110002", Outcome.REJECTED, "bob") in outcomes
    assert_invariants(pipeline)


def test_cancellation_before_shipment_releases_the_stock(pipeline: Pipeline) -> None:
    stock(pipeline, "acme", "SKU-00012", "SKU-00031")
    pipeline.start_workers(2)
    trade = sample("tmall_trade.json")
    raw = pipeline.topics.raw[Channel.TMALL]
    key = "acme:flagship:3459812345678901234"
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
    wait_for(
        lambda: len(pipeline.read(pipeline.topics.order_cancellations, OrderCancellation)) == 2, what="cancellation"
    )
    verdict = assert_invariants(pipeline)
    kinds = [c.kind for c in pipeline.read(pipeline.topics.order_cancellations, OrderCancellation)]
    assert kinds == [CancellationKind.LINES, CancellationKind.ORDER]
    assert verdict.counts["final_levels"]["acme:SKU-00012"] == {"WH-A": [10, 0]}
    assert verdict.counts["final_levels"]["acme:SKU-00031"] == {"WH-A": [10, 0]}
    releases = [e for e in pipeline.records().stock_events if e.kind is CommandKind.RELEASE]
    assert len(releases) == 2


def test_a_poisoned_raw_record_is_dead_lettered_and_the_next_is_processed(pipeline: Pipeline) -> None:
    stock(pipeline, "acme", "SKU-00003")
    pipeline.start_workers(2)
    raw = pipeline.topics.raw[Channel.JD]
    key = "acme:s1:301234567890"
    poison = b'{"orderId": "301234567890", "itemInfoList": [{"itemTotal": {"nested": true}}'
    pipeline.send(raw, [poison, json.dumps(sample("jd_order.json")).encode()], key=key)
    pipeline.send(raw, [b"\xff\xfe not json"], key="no-colons-here")
    pipeline.wait_decisions(1)
    verdict = assert_invariants(pipeline)
    letters = pipeline.read(pipeline.topics.dead_letters, DeadLetter)
    by_reason = {d.reason: d for d in letters}
    assert set(by_reason) == {ReasonCode.MALFORMED_JSON, ReasonCode.BAD_KEY}
    poisoned = by_reason[ReasonCode.MALFORMED_JSON]
    assert poisoned.original_value == poison and poisoned.source_topic == raw and poisoned.stage == "ingest"
    assert poisoned.tenant == "acme" and poisoned.source_offset >= 0
    assert verdict.counts["accepted"] == 1


def test_the_generated_day_through_every_route(pipeline: Pipeline, credentials: Credentials) -> None:
    """A small channel day (duplicates, unpaid, cancellations, refunds, locks, bad payloads) end to end."""
    import asyncio

    from engine.channels import channel_day
    from engine.delivery import deliver

    workload = Workload(WorkloadSpec(orders=600, seed=8, skus=150))
    pipeline.publish_catalog(workload.catalog())
    pipeline.load(workload)
    pipeline.start_workers(2)
    deliveries = list(channel_day(workload.orders(), 8))
    sent = asyncio.run(deliver(pipeline.settings, pipeline.topics, deliveries, credentials, 2))
    assert sent.by_route["kafka"] and sent.by_route["http"] and sent.by_route["webhook"]
    expected = len({(d.tenant, d.channel, d.shop, d.platform_id) for d in deliveries if d.kind != "bad"})
    wait_for(lambda: resolved(pipeline) >= expected, timeout_s=240, what="every order decided or held")
    verdict = assert_invariants(pipeline)
    assert verdict.counts["orders"] == expected
    assert verdict.counts["decisions"] + verdict.counts["held"] == expected  # some JD orders stay locked
    assert verdict.counts["dead_letters"] or sent.http_refused  # the bad payloads were classified somewhere


def resolved(p: Pipeline) -> int:
    """Orders decided, plus orders whose latest review outcome is a hold."""
    decided = set(p.decisions())
    last: dict[str, ReviewDecision] = {}
    for r in p.read(p.topics.review_decisions, ReviewDecision):
        last[r.key] = r
    return len(decided | {k for k, r in last.items() if r.outcome is Outcome.HELD})
