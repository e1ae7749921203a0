"""Poison records on the real broker (issue #18): a request with far too many lines is refused at the edge with a
413 naming the limit, and a record near the broker's size limit — on the aftersales inbox, a raw channel topic or
the inventory commands — is dead-lettered with a bounded letter (its size, digest and a prefix; the full bytes
stay in the source topic) while the partition moves on to the next record and no worker exits. Every test ends
with the invariants, which recognise the bad records by the digest of their whole bytes."""

from __future__ import annotations

import hashlib
import json

import orjson
import pytest

from engine.kafka.clients import read_topics
from engine.supervisor import WorkerPool
from schemas import wire
from schemas.aftersales import MAX_RETURN_LINES
from schemas.deadletter import MAX_VALUE_PREFIX, DeadLetter, ReasonCode
from schemas.inventory import Receive, StockEvent, receive_id
from schemas.order import Channel
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_channels_pipeline import auth, sample, sent_order, stock
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.delivery import Credentials

pytestmark = pytest.mark.pipeline

NEAR_LIMIT = 900_000  # bytes: just under the broker's 1 MB record limit (and under OMS_MAX_PAYLOAD_BYTES)
BOUND = 16 * 1024  # a dead letter, encoded, stays well under this


def letters(p: Pipeline) -> list[DeadLetter]:
    return p.read(p.topics.dead_letters, DeadLetter)


def letter_of(p: Pipeline, raw: bytes) -> DeadLetter | None:
    """The dead letter of ``raw``, recognised by the digest of its whole bytes."""
    digest = hashlib.sha256(raw).hexdigest()
    return next((d for d in letters(p) if d.value_sha256 == digest), None)


def assert_bounded(p: Pipeline, letter: DeadLetter, raw: bytes, topic: str) -> None:
    """The letter is small, says how large the record was and its digest, and points at the full bytes."""
    assert len(wire.encode(letter)) < BOUND
    assert letter.source_topic == topic and letter.value_truncated and letter.original_value is None
    assert letter.value_size == len(raw) and letter.value_sha256 == hashlib.sha256(raw).hexdigest()
    assert letter.value_prefix == raw[:MAX_VALUE_PREFIX]
    at = (letter.source_partition, letter.source_offset)
    source = [m.value for m in read_topics(p.bootstrap, [topic]) if (m.partition, m.offset) == at]
    assert source == [raw]  # the full bytes are where the letter says


def assert_no_worker_exited(pool: WorkerPool) -> None:
    assert all(pool.alive(i) for i in range(pool.count)), [pool.log_tail(i, 30) for i in range(pool.count)]
    assert pool.restarts == [], pool.restarts


def test_a_return_with_far_too_many_lines_is_refused_at_the_edge_and_dead_lettered_on_the_topic(
    pipeline: Pipeline, credentials: Credentials
) -> None:
    pool = pipeline.start_workers(2, topics=[pipeline.topics.aftersales_inbox])
    order = "web-s1-poison1"
    lines = [{"line_id": f"{order}#{i % 200 + 1}", "quantity": 1} for i in range(20_000)]
    body = {"return_id": "RMA-HUGE", "lines": lines, "reason": "too many"}
    assert len(json.dumps(body)) < pipeline.settings.max_payload_bytes  # the line limit refuses it, not the size
    url = pipeline.api(f"/api/v1/acme/orders/{order}/returns")
    status, answer = http("POST", url, body, auth(credentials))
    assert (status, answer["error"]) == (413, "oversize"), answer
    assert f"20000 lines in one return request; at most {MAX_RETURN_LINES}" in answer["message"]
    inbox = pipeline.topics.aftersales_inbox
    assert not [m for m in read_topics(pipeline.bootstrap, [inbox]) if m.key == f"acme:{order}".encode()]
    receipt = {"warehouse": "WH-SH", "lines": [{**ln, "disposition": "sellable"} for ln in lines[:501]]}
    status, answer = http("POST", f"{url}/RMA-HUGE/receipt", receipt, auth(credentials))
    assert (status, answer["error"]) == (413, "oversize") and "at most 500" in answer["message"], answer

    # the same request put on the aftersales inbox directly (as an integration could): a schema violation, bounded
    record = {"kind": "return_requested", "tenant": "acme", "order_id": order, "return_id": "RMA-HUGE",
              "lines": lines, "reason": "x" * 10, "source": "api", "ts": 1}  # fmt: skip
    poison = orjson.dumps(record)
    assert NEAR_LIMIT * 0.9 < len(poison) < 1_000_000
    pipeline.send_bad(inbox, f"acme:{order}", poison)
    # then a small return of the same order (same partition): it is processed — refused, the order is unknown
    status, answer = http("POST", url, {"return_id": "RMA-1", "lines": lines[:1]}, auth(credentials))
    assert status == 202, answer
    pipeline.inputs.refused_requests[("return_requested", order)] = ReasonCode.RETURN_INVALID
    after = wait_for(
        lambda: [d for d in letters(pipeline) if d.reason is ReasonCode.RETURN_INVALID and d.stage == "aftersales"],
        timeout_s=180,
        what="the return after the poison record to be processed",
    )
    poisoned = letter_of(pipeline, poison)
    assert poisoned is not None and poisoned.reason is ReasonCode.SCHEMA_VIOLATION and poisoned.stage == "aftersales"
    assert poisoned.source_offset < after[0].source_offset and poisoned.source_partition == after[0].source_partition
    assert_bounded(pipeline, poisoned, poison, inbox)
    assert_no_worker_exited(pool)
    assert_invariants(pipeline)
    assert_no_worker_exited(pool)


def test_records_near_the_size_limit_are_dead_lettered_and_their_partitions_move_on(pipeline: Pipeline) -> None:
    stock(pipeline, "acme", "SKU-00012", "SKU-00031")
    pool = pipeline.start_workers(2)

    # (b) a raw Tmall trade of ~900 KB (thousands of lines), then a good trade of the same order (same partition)
    raw = pipeline.topics.raw[Channel.TMALL]
    key = "acme:flagship:3459812345678901234"
    trade = sample("tmall_trade.json")
    line = trade["orders"]["order"][0]
    huge = orjson.dumps({**trade, "orders": {"order": [line] * (NEAR_LIMIT // len(orjson.dumps(line)))}})
    assert NEAR_LIMIT * 0.9 < len(huge) < 1_000_000
    pipeline.send_bad(raw, key, huge)
    pipeline.send(raw, [json.dumps(trade).encode()], key=key)
    pipeline.inputs.add_orders(
        [sent_order(Channel.TMALL, "flagship", "3459812345678901234", [("SKU-00012", 2), ("SKU-00031", 1)])]
    )

    # (c) a ~900 KB stock command keyed to a real SKU, then a good receipt of the same SKU (same partition)
    good = Receive(
        command_id=receive_id("acme", "SKU-00012", "WH-A", "d-after-poison"), tenant="acme", sku="SKU-00012",
        origin="poison-test", seq=1, ts=1, warehouse="WH-A", quantity=3, document_id="d-after-poison",
    )  # fmt: skip
    bloated = orjson.dumps({**wire.to_builtins(good), "document_id": "d" * NEAR_LIMIT})
    assert NEAR_LIMIT < len(bloated) < 1_000_000
    pipeline.send_bad(pipeline.topics.inventory_commands, good.key, bloated)
    pipeline.send_commands([good])

    pipeline.wait_decisions(1)
    wait_for(
        lambda: any(e.event_id == good.command_id for e in pipeline.read(pipeline.topics.stock_events, StockEvent)),
        timeout_s=120,
        what="the receipt after the poison command to apply",
    )
    decision = pipeline.decisions()["acme:tmall-flagship-3459812345678901234"]
    assert decision.status.value == "accepted", decision

    trade_letter = wait_for(lambda: letter_of(pipeline, huge), what="the raw record's dead letter")
    assert trade_letter.reason is ReasonCode.INVALID_RECORD and trade_letter.stage == "ingest"
    assert trade_letter.tenant == "acme" and "200" in trade_letter.detail
    assert_bounded(pipeline, trade_letter, huge, raw)
    command_letter = wait_for(lambda: letter_of(pipeline, bloated), what="the stock command's dead letter")
    assert command_letter.reason is ReasonCode.SCHEMA_VIOLATION and command_letter.stage == "inventory"
    assert_bounded(pipeline, command_letter, bloated, pipeline.topics.inventory_commands)

    assert_no_worker_exited(pool)
    verdict = assert_invariants(pipeline)
    assert verdict.counts["final_levels"]["acme:SKU-00012"] == {"WH-A": [13, 2]}
    assert verdict.counts["dead_letters"] == {"invalid_record": 1, "schema_violation": 1}
    assert_no_worker_exited(pool)
