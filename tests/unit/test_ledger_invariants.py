"""I5 against hand-made histories: a clean day passes, each way the books can go wrong is caught."""

from __future__ import annotations

import msgspec

from agents.ledger.core import OrderBook, book
from invariants.check import Verdict
from invariants.collect import Outputs
from invariants.inputs import Inputs
from invariants.ledger import check_ledger
from schemas import wire
from schemas.aftersales import OrderOpened, SoldLine
from schemas.inventory import CommandKind, Receive, StockEvent, receive_id
from schemas.ledger import LedgerPolicy, StockMoved, Voucher, VoucherLine
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus
from schemas.shipping import GoodsIssued, PackedLine

T, SKU, WH = "t1", "SKU-1", "WH"
POLICY = LedgerPolicy()


def _event(kind: CommandKind, version: int, d_on_hand: int, d_value: int, value: int, on_hand: int, eid: str,
           order: str | None = None) -> StockEvent:  # fmt: skip
    return StockEvent(
        event_id=eid, tenant=T, sku=SKU, warehouse=WH, kind=kind, d_on_hand=d_on_hand, d_reserved=0, on_hand=on_hand,
        reserved=0, version=version, order_id=order, line_id=f"{order}#1" if order else None, d_value_fen=d_value,
        value_fen=value, origin="o", seq=version, ts=1_000 + version,
    )  # fmt: skip


def _day() -> tuple[Inputs, Outputs, dict[str, StockEvent]]:
    """3 units received at ¥10.00, an order of 2 paid ¥30.00 shipped whole: its revenue and cost booked."""
    inputs, out = Inputs(), Outputs()
    inputs.add_stock([Receive(command_id=receive_id(T, SKU, WH, "d1"), tenant=T, sku=SKU, origin="l", seq=1, ts=1,
                              warehouse=WH, quantity=3, unit_cost_fen=1_000, document_id="d1")])  # fmt: skip
    order = Order(
        tenant=T, order_id="o1", channel=Channel.WEB, shop_id="s", platform_order_id="p1", status=OrderStatus.PAID,
        buyer=Buyer(id="b"), receiver=Address(name="n", phone="13900000000", province="p", city="c"),
        lines=[OrderLine(line_no=1, sku=SKU, quantity=2, unit_price_fen=1_500)], created_at=1, ingested_at=1, version=1,
    )  # fmt: skip
    inputs.add_orders([order])
    received = _event(CommandKind.RECEIVE, 1, 3, 3_000, 3_000, 3, receive_id(T, SKU, WH, "d1"))
    issued_event = _event(CommandKind.ISSUE, 2, -2, -2_000, 1_000, 1, "issue.t1.o1#1", "o1")
    applied = {e.event_id: e for e in (received, issued_event)}
    out.stock_events = list(applied.values())
    opened = OrderOpened(tenant=T, order_id="o1", channel=Channel.WEB, shop_id="s", platform_order_id="p1",
                         receiver=order.receiver, lines=[SoldLine(line_id="o1#1", line_no=1, sku=SKU, quantity=2,
                                                                  paid_fen=3_000)], ts=2)  # fmt: skip
    goods = GoodsIssued(
        issue_id="S1.o1",
        tenant=T,
        order_id="o1",
        shipment_id="S1",
        warehouse=WH,
        lines=[PackedLine(order_id="o1", line_id="o1#1", sku=SKU, units=2)],
        waybills=["W1"],
        ts=3,
    )
    out.goods_issued = [goods]
    state: OrderBook | None = None
    for record in (opened, goods, StockMoved(event=received), StockMoved(event=issued_event)):
        step = book(state, record, POLICY)
        state = step.state if step.changed else state
        for voucher in step.vouchers:
            out.vouchers.append(voucher)
            out.voucher_bytes.setdefault(voucher.voucher_id, set()).add(wire.encode(voucher))
    return inputs, out, applied


def _violations(inputs: Inputs, out: Outputs, applied: dict[str, StockEvent]) -> list[str]:
    v = Verdict()
    check_ledger(inputs, out, applied, v)
    return v.violations


def _replace(out: Outputs, voucher_id: str, **changes: object) -> None:
    out.vouchers = [msgspec.structs.replace(v, **changes) if v.voucher_id == voucher_id else v for v in out.vouchers]
    out.voucher_bytes = {v.voucher_id: {wire.encode(v)} for v in out.vouchers}


def test_a_clean_day_passes_with_its_numbers() -> None:
    inputs, out, applied = _day()
    v = Verdict()
    check_ledger(inputs, out, applied, v)
    assert v.violations == [] and v.counts["vouchers"] == 3 and v.counts["inventory_value_fen"] == 1_000


def test_an_unbalanced_voucher_and_a_voucher_written_twice_differently_are_caught() -> None:
    inputs, out, applied = _day()
    cost = next(v for v in out.vouchers if v.kind.value == "cost")
    lines = [msgspec.structs.replace(cost.lines[0], debit_fen=1_999), cost.lines[1]]
    _replace(out, cost.voucher_id, lines=lines)
    found = _violations(inputs, out, applied)
    assert any("debits 1999 != credits 2000" in f for f in found)
    inputs, out, applied = _day()
    other = msgspec.structs.replace(out.vouchers[0], book_date="2020-01-01")
    out.voucher_bytes[other.voucher_id].add(wire.encode(other))
    assert any("written 2 times" in f for f in _violations(inputs, out, applied))


def test_a_missing_revenue_or_cost_voucher_or_a_cost_other_than_the_goods_left_with_is_caught() -> None:
    inputs, out, applied = _day()
    out.vouchers = [v for v in out.vouchers if v.kind.value != "revenue"]
    assert any("has no revenue voucher" in f for f in _violations(inputs, out, applied))
    inputs, out, applied = _day()
    out.vouchers = [v for v in out.vouchers if v.kind.value != "cost"]
    found = _violations(inputs, out, applied)
    assert any("has no cost voucher" in f for f in found) and any("inventory in the books" in f for f in found)
    inputs, out, applied = _day()
    cost = next(v for v in out.vouchers if v.kind.value == "cost")
    lines = [
        VoucherLine(account="6401", name="c", debit_fen=1_500),
        VoucherLine(account="1405", name="i", credit_fen=1_500),
    ]
    _replace(out, cost.voucher_id, lines=lines)
    assert any("the goods left at 2000" in f for f in _violations(inputs, out, applied))


def test_revenue_other_than_what_the_buyer_paid_is_caught() -> None:
    inputs, out, applied = _day()
    revenue = next(v for v in out.vouchers if v.kind.value == "revenue")
    more = [100, 100, 0]  # Dr receivable +1.00 / Cr revenue +1.00: still balanced, but not what was paid
    lines = [
        msgspec.structs.replace(ln, debit_fen=ln.debit_fen + (add if ln.debit_fen else 0),
                                credit_fen=ln.credit_fen + (add if ln.credit_fen else 0))
        for ln, add in zip(revenue.lines, more, strict=True)
    ]  # fmt: skip
    _replace(out, revenue.voucher_id, lines=lines)
    assert any("buyer paid 3000" in f for f in _violations(inputs, out, applied))


def test_a_valuation_off_the_moving_average_or_a_receipt_at_another_cost_is_caught() -> None:
    inputs, out, applied = _day()
    cheap = _event(CommandKind.ISSUE, 2, -2, -1_800, 1_200, 1, "issue.t1.o1#1", "o1")  # ¥9.00 a unit out of ¥10.00
    applied["issue.t1.o1#1"] = cheap
    assert any("the moving average says 2000" in f for f in _violations(inputs, out, applied))
    inputs, out, applied = _day()
    rid = receive_id(T, SKU, WH, "d1")
    applied[rid] = msgspec.structs.replace(applied[rid], d_value_fen=3_300, value_fen=3_300)
    assert any("sent 3000" in f for f in _violations(inputs, out, applied))


def test_books_and_warehouse_that_disagree_are_caught() -> None:
    inputs, out, applied = _day()
    extra = Voucher(
        voucher_id="receipt.t1.x",
        tenant=T,
        kind="receipt",
        source_id="x",
        entity=SKU,
        book_date="2025-01-01",
        lines=[VoucherLine(account="1405", name="i", debit_fen=5), VoucherLine(account="2202", name="p", credit_fen=5)],
        ts=1,
    )
    out.vouchers.append(extra)
    out.voucher_bytes[extra.voucher_id] = {wire.encode(extra)}
    assert any("in the warehouse 1000" in f for f in _violations(inputs, out, applied))
