"""Poison records and oversized requests (issue #18): a dead letter always fits in a record (a bounded prefix, the
size and digest of the whole), the checker still recognises and verifies them, and every list a request may carry
has a limit answered with a 413 that names it (no servers)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from agents.aftersales.views import return_receipt, return_request
from agents.fulfilment.views import MAX_PICK_LINES
from agents.fulfilment.views import parse as parse_pick
from agents.orders.views import MAX_RULES, parse_rules
from agents.tracking.views import MAX_EVENTS
from agents.tracking.views import parse as parse_events
from engine.http.edge import Edge, Problem
from invariants import Inputs, Outputs, check
from schemas import wire
from schemas.aftersales import MAX_RETURN_LINES, ReturnReceived, ReturnRequested
from schemas.deadletter import MAX_KEY_PREFIX, MAX_VALUE_PREFIX, DeadLetter, ReasonCode, dead_letter
from schemas.fulfilment import PickConfirmation
from schemas.inventory import Receive, receive_id
from schemas.review import RuleSet

TOPIC = "t.raw.tmall"


def letter_of(value: bytes | None, key: bytes | None = b"acme:s1:1", offset: int = 7, **kw: Any) -> DeadLetter:
    return dead_letter(
        "ingest", TOPIC, 3, offset, key, value, kw.pop("reason", ReasonCode.MALFORMED_JSON), "x" * 5000, 1, **kw
    )


# -- dead letters --------------------------------------------------------------------------------------------
def test_a_dead_letter_of_a_2mb_value_is_bounded_and_carries_the_size_and_digest_of_the_whole() -> None:
    value = bytes(range(256)) * 8192  # 2 MiB, not text: every byte value
    key = b"acme:" + b"k" * 100_000
    letter = letter_of(value, key)
    encoded = wire.encode(letter)
    assert len(encoded) < 16 * 1024, len(encoded)
    back = wire.decode(encoded, DeadLetter)
    assert back == letter
    assert back.value_truncated and back.original_value is None
    assert back.value_size == back.original_size == len(value) == 2 * 1024 * 1024
    assert back.value_sha256 == back.digest == hashlib.sha256(value).hexdigest()
    assert back.value_prefix == value[:MAX_VALUE_PREFIX] and len(back.value_prefix) == MAX_VALUE_PREFIX
    assert back.matches(value) and not back.matches(value[:-1]) and not back.matches(value[:-1] + b"\x00")
    assert back.key_truncated and back.key_size == len(key) and back.key_sha256 == hashlib.sha256(key).hexdigest()
    assert base64.b64decode(back.key_b64 or "") == key[:MAX_KEY_PREFIX]
    assert len(back.detail) == 2000
    assert (back.source_topic, back.source_partition, back.source_offset) == (TOPIC, 3, 7)
    assert back.dead_letter_id == "dlq.t.raw.tmall.3.7"


def test_a_small_record_is_kept_whole() -> None:
    value = b'{"tid": 1, "broken": '
    letter = wire.decode(wire.encode(letter_of(value, b"acme:s1:1")), DeadLetter)
    assert not letter.value_truncated and not letter.key_truncated
    assert letter.original_value == letter.value_prefix == value
    assert letter.original_size == len(value) and letter.digest == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(letter.key_b64 or "") == b"acme:s1:1" and letter.key_size == 9
    exactly = letter_of(b"x" * MAX_VALUE_PREFIX)  # at the bound: still whole
    assert not exactly.value_truncated and exactly.original_value == b"x" * MAX_VALUE_PREFIX
    assert letter_of(b"x" * (MAX_VALUE_PREFIX + 1)).value_truncated


def test_a_record_without_key_or_value_is_described_too() -> None:
    letter = letter_of(None, None)
    assert letter.key_b64 is None and letter.key_size is None and letter.key_sha256 is None
    assert letter.original_value == b"" and letter.original_size == 0 and not letter.value_truncated


def test_a_dead_letter_of_version_1_still_reads() -> None:
    """Letters written before the bound held the whole bytes and no sizes or digests."""
    v1 = {
        "v": 1, "dead_letter_id": "dlq.t.x.0.1", "reason": "malformed_json", "detail": "", "stage": "ingest",
        "source_topic": "t.x", "source_partition": 0, "source_offset": 1, "key_b64": None,
        "value_b64": base64.b64encode(b"{nope").decode(), "tenant": None, "ts": 1,
    }  # fmt: skip
    letter = wire.decode(orjson.dumps(v1), DeadLetter)
    assert letter.original_value == b"{nope" and not letter.value_truncated
    assert letter.original_size == 5 and letter.digest == hashlib.sha256(b"{nope").hexdigest()


# -- the checker (I6) on truncated letters -------------------------------------------------------------------
def receive(qty: int) -> Receive:
    return Receive(
        command_id=receive_id("acme", "A", "WH", "d1"), tenant="acme", sku="A", origin="loader", seq=1, ts=1,
        warehouse="WH", quantity=qty, document_id="d1",
    )  # fmt: skip


def test_the_checker_recognises_a_large_bad_record_by_the_digest_of_its_whole_bytes() -> None:
    big = b'{"kind": "receive", ' + b" " * 900_000
    letter = letter_of(big, reason=ReasonCode.MALFORMED_JSON)
    inputs, out = Inputs(), Outputs(dead_letters=[letter])
    inputs.bad_records.add(big)
    assert check(inputs, out, 4).ok  # by digest, without the source
    out.originals[letter.dead_letter_id] = big
    assert check(inputs, out, 4).ok  # and verified against the source record
    inputs.bad_records = {big + b" "}  # another record: this one was not dead-lettered, the letter not meant
    found = " ".join(check(inputs, out, 4).violations)
    assert "a bad record was never dead-lettered" in found and "not among the bad" in found


def test_a_letter_that_misstates_its_record_is_caught() -> None:
    big = b"x" * 10_000
    letter = letter_of(big)
    inputs, out = Inputs(), Outputs(dead_letters=[letter])
    inputs.bad_records.add(big)
    out.originals[letter.dead_letter_id] = b"y" * 10_000  # not the record the letter describes
    assert "its source record has 10000 bytes" in " ".join(check(inputs, out, 4).violations)
    out.originals = {}
    letter = dead_letter("ingest", TOPIC, 0, 1, None, b"small", ReasonCode.MALFORMED_JSON, "", 1)
    forged = DeadLetter(**{**wire.to_builtins(letter), "value_sha256": "0" * 64, "reason": ReasonCode.MALFORMED_JSON})
    out.dead_letters = [forged]
    inputs.bad_records = {b"small"}
    assert "size or digest is not the one it states" in " ".join(check(inputs, out, 4).violations)


def test_a_large_letter_is_judged_by_its_source_record_and_refused_without_it() -> None:
    cmd = receive(4)
    padded = wire.encode(cmd)[:-1] + b"," + b'"pad":"' + b"p" * 8000 + b'"}'  # a valid command, > the prefix
    assert wire.decode(padded, Receive) == cmd
    letter = dead_letter("inventory", "t.inventory-commands", 0, 5, b"acme:A", padded, ReasonCode.WOULD_OVERSELL, "", 1)
    assert letter.value_truncated
    inputs, out = Inputs(), Outputs(dead_letters=[letter])
    inputs.add_stock([cmd])
    inputs.refused_commands[cmd.command_id] = ReasonCode.WOULD_OVERSELL
    found = " ".join(check(inputs, out, 4).violations)
    assert "could not be read back from t.inventory-commands/0@5" in found
    out.originals[letter.dead_letter_id] = padded
    assert check(inputs, out, 4).ok  # the source says which command it was, and its sender meant it refused


# -- request limits ------------------------------------------------------------------------------------------
def refused(call: Any, *args: Any) -> Problem:
    with pytest.raises(Problem) as exc:
        call(*args)
    return exc.value


def test_a_return_request_or_receipt_with_too_many_lines_is_a_413_naming_the_limit() -> None:
    line = {"line_id": "web-s1-1#1", "quantity": 1}
    ok = orjson.dumps({"return_id": "RMA-1", "lines": [line] * MAX_RETURN_LINES})
    assert len(return_request(ok, "acme", "web-s1-1", 1).lines) == MAX_RETURN_LINES == 500
    too_many = orjson.dumps({"return_id": "RMA-1", "lines": [line] * 20_000})
    problem = refused(return_request, too_many, "acme", "web-s1-1", 1)
    assert (problem.status, problem.code) == (413, "oversize")
    assert "20000 lines in one return request; at most 500" in problem.message
    received = {**line, "disposition": "sellable"}
    body = orjson.dumps({"warehouse": "WH-SH", "lines": [received] * MAX_RETURN_LINES})
    assert len(return_receipt(body, "acme", "web-s1-1", "RMA-1", 1).lines) == MAX_RETURN_LINES
    body = orjson.dumps({"warehouse": "WH-SH", "lines": [received] * (MAX_RETURN_LINES + 1)})
    problem = refused(return_receipt, body, "acme", "web-s1-1", "RMA-1", 1)
    assert (problem.status, problem.code) == (413, "oversize") and "at most 500" in problem.message


def test_a_return_with_too_many_lines_on_the_topic_is_a_schema_violation() -> None:
    """What the API refuses must also be refused when it arrives on the aftersales inbox (dead-lettered)."""
    from schemas.aftersales import AftersalesRecord

    lines = [{"line_id": "web-s1-1#1", "quantity": 1}] * (MAX_RETURN_LINES + 1)
    request = {"kind": "return_requested", "tenant": "acme", "order_id": "web-s1-1", "return_id": "r1",
               "lines": lines, "ts": 1}  # fmt: skip
    receipt = {"kind": "return_received", "tenant": "acme", "order_id": "web-s1-1", "return_id": "r1",
               "warehouse": "WH", "lines": [{**ln, "disposition": "damaged"} for ln in lines], "ts": 1}  # fmt: skip
    for raw, typ in ((request, ReturnRequested), (receipt, ReturnReceived)):
        with pytest.raises(wire.WireError) as exc:
            wire.decode(orjson.dumps(raw), AftersalesRecord)
        assert exc.value.reason is ReasonCode.SCHEMA_VIOLATION and "500" in exc.value.detail
        raw["lines"] = raw["lines"][:MAX_RETURN_LINES]
        assert isinstance(wire.decode(orjson.dumps(raw), AftersalesRecord), typ)


def test_carrier_events_are_1_to_500_per_call() -> None:
    event = {"carrier": "sf", "waybill": "SF1", "event_id": "e1", "status": "in_transit", "occurred_at": 1}
    assert len(parse_events(orjson.dumps([event] * MAX_EVENTS), "acme")) == MAX_EVENTS == 500
    problem = refused(parse_events, orjson.dumps([event] * (MAX_EVENTS + 1)), "acme")
    assert (problem.status, problem.code) == (413, "oversize")
    assert problem.message == "501 events in one request; at most 500"
    assert refused(parse_events, b"[]", "acme").status == 422


def test_a_pick_confirmation_has_at_most_the_lines_its_record_allows() -> None:
    line = {"shipment_id": "shp.1", "line_id": "o1#1", "bin": "WH-SH-A01-01-1", "picked": 1}
    body = {"warehouse": "WH-SH", "pick_list_id": "wave.1", "lines": [line] * MAX_PICK_LINES}
    assert len(parse_pick(orjson.dumps(body), "acme", "token:abcd", 1).lines) == MAX_PICK_LINES
    problem = refused(parse_pick, orjson.dumps({**body, "lines": [line] * (MAX_PICK_LINES + 1)}), "acme", "t:a", 1)
    assert (problem.status, problem.code) == (413, "oversize") and "at most 2000" in problem.message
    fields = {**body, "kind": "pick", "tenant": "acme", "ts": 1, "lines": [line] * (MAX_PICK_LINES + 1)}
    with pytest.raises(wire.WireError):  # the limit is the record's own
        wire.convert(fields, PickConfirmation)


def test_a_rule_set_has_at_most_500_rules() -> None:
    rule = {"kind": "amount_over", "id": "big", "action": "hold", "reason": "big", "threshold_fen": 100}
    assert len(parse_rules(orjson.dumps({"tenant": "acme", "rules": [rule] * MAX_RULES})).rules) == MAX_RULES
    problem = refused(parse_rules, orjson.dumps({"tenant": "acme", "rules": [rule] * (MAX_RULES + 1)}))
    assert (problem.status, problem.code) == (413, "oversize") and "at most 500" in problem.message
    with pytest.raises(wire.WireError):  # the limit is the record's own
        wire.convert({"tenant": "acme", "rules": [rule] * (MAX_RULES + 1)}, RuleSet)
    assert refused(parse_rules, b"{not json").status == 400
    assert refused(parse_rules, b'{"tenant": "acme", "rules": 3}').status == 422


class _Body:
    def __init__(self, chunks: list[bytes], content_length: int | None) -> None:
        self.content_length = content_length
        self.content = SimpleNamespace(iter_any=lambda: self._chunks(chunks))

    async def _chunks(self, chunks: list[bytes]) -> Any:
        for chunk in chunks:
            yield chunk


def test_a_body_over_the_limit_is_a_413_whether_announced_or_streamed() -> None:
    edge = object.__new__(Edge)
    edge.settings = SimpleNamespace(max_payload_bytes=1024)  # type: ignore[assignment]
    assert asyncio.run(edge.body(_Body([b"a" * 600, b"b" * 424], None))) == b"a" * 600 + b"b" * 424
    for request in (_Body([b"x"], 5000), _Body([b"a" * 600, b"b" * 600], None)):
        with pytest.raises(Problem) as exc:
            asyncio.run(edge.body(request))
        assert (exc.value.status, exc.value.code) == (413, "oversize")
        assert "1024" in exc.value.message and "OMS_MAX_PAYLOAD_BYTES" in exc.value.message
