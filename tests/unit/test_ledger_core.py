"""The books, pure: every template on worked numbers, deterministic ids, the delivery policy, settlements."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.ledger.agent import post
from agents.ledger.chart import STANDARD
from agents.ledger.core import OrderBook, Step, book, book_date
from schemas.aftersales import OrderOpened, OrderProgress, ProgressEvent, ReturnSettled, SettledLine, SoldLine
from schemas.inventory import CommandKind, StockEvent
from schemas.ledger import (
    Account,
    AccountRole,
    LedgerPolicy,
    ParcelsShipped,
    ProgressMade,
    Recognition,
    ReconStatus,
    ReturnBooked,
    SettlementLine,
    StockMoved,
    TrialBalance,
    Voucher,
    VoucherKind,
    check_balanced,
)
from schemas.order import Address, Channel
from schemas.shipping import GoodsIssued, PackedLine, ShipmentShipped, ShippedParcel

T = "t1"
STD = LedgerPolicy()
DELIVERY = LedgerPolicy(recognition=Recognition.DELIVERY)
TS = 1_763_600_000_000  # 2025-11-20 09:33 in China


def opened(
    order: str = "o1", lines: tuple[tuple[int, int], ...] = ((2, 22_600), (1, 11_300)), **kw: object
) -> OrderOpened:
    return OrderOpened(
        tenant=T, order_id=order, channel=Channel.TMALL, shop_id="s1", platform_order_id="P1",
        receiver=Address(name="李四", phone="13900001234", province="北京市", city="北京市"),
        lines=[SoldLine(line_id=f"{order}#{i + 1}", line_no=i + 1, sku=f"SKU-{i + 1}", quantity=q, paid_fen=paid)
               for i, (q, paid) in enumerate(lines)],
        ts=TS, **kw,
    )  # fmt: skip


def issued(
    order: str, units: dict[str, int], shipment: str = "S1", waybills: tuple[str, ...] = ("SF1",)
) -> GoodsIssued:
    return GoodsIssued(
        issue_id=f"{shipment}.{order}", tenant=T, order_id=order, shipment_id=shipment, warehouse="WH-A",
        lines=[PackedLine(order_id=order, line_id=line, sku="SKU-1", units=n) for line, n in units.items()],
        waybills=list(waybills), ts=TS + 1000,
    )  # fmt: skip


def moved(
    kind: CommandKind, d_on_hand: int, d_value: int, order: str | None = None, event_id: str = "e1"
) -> StockMoved:
    return StockMoved(
        event=StockEvent(
            event_id=event_id, tenant=T, sku="SKU-1", warehouse="WH-A", kind=kind, d_on_hand=d_on_hand,
            d_reserved=0, on_hand=100, reserved=0, version=1, order_id=order, line_id=f"{order}#1" if order else None,
            d_value_fen=d_value, value_fen=100_000, origin="o", seq=1, ts=TS + 2000,
        )
    )  # fmt: skip


def lines(voucher: Voucher) -> list[tuple[str, int, int]]:
    return [(ln.account, ln.debit_fen, ln.credit_fen) for ln in voucher.lines]


def balanced(step: Step) -> Step:
    for voucher in step.vouchers:
        assert check_balanced(voucher) is None, check_balanced(voucher)
    return step


def test_a_receipt_books_inventory_at_its_net_value_with_input_vat_against_the_supplier() -> None:
    """100 units @ ¥10.00 net: Dr 1405 1,000.00, Dr 2221 进项 130.00 / Cr 2202 1,130.00."""
    (v,) = balanced(book(None, moved(CommandKind.RECEIVE, 100, 100_000, event_id="receive.t1.x"), STD)).vouchers
    assert v.kind is VoucherKind.RECEIPT and v.voucher_id == "receipt.t1.receive.t1.x"
    assert lines(v) == [("1405", 100_000, 0), ("2221.01", 13_000, 0), ("2202", 0, 113_000)]
    assert v.book_date == book_date(TS + 2000) == "2025-11-20" and v.entity == "SKU-1" and v.order_id is None


def test_goods_issued_books_revenue_with_output_vat_and_the_issue_its_cost() -> None:
    """An order paid ¥339.00 (¥226 + ¥113) shipped whole: Dr 1122 339.00 / Cr 6001 300.00, Cr 2221 销项 39.00; the
    issue of a line at ¥150.00 cost: Dr 6401 / Cr 1405."""
    step = balanced(book(None, opened(), STD))
    assert step.changed and not step.vouchers
    step = balanced(book(step.state, issued("o1", {"o1#1": 2, "o1#2": 1}), STD))
    (v,) = step.vouchers
    assert (v.kind, v.voucher_id, v.channel) == (VoucherKind.REVENUE, "revenue.t1.S1.o1", Channel.TMALL)
    assert lines(v) == [("1122", 33_900, 0), ("6001", 0, 30_000), ("2221.02", 0, 3_900)]
    assert step.state.receivable_fen == 33_900
    (cost,) = balanced(book(step.state, moved(CommandKind.ISSUE, -2, -15_000, "o1", "issue.t1.o1#1"), STD)).vouchers
    assert cost.kind is VoucherKind.COST and lines(cost) == [("6401", 15_000, 0), ("1405", 0, 15_000)]
    assert cost.voucher_id == "cost.t1.issue.t1.o1#1" and cost.lines[1].sub == "WH-A/SKU-1"


def test_a_line_shipped_in_parts_bills_what_was_paid_exactly_the_last_part_taking_the_rest() -> None:
    """3 units paid ¥100.00: 1 unit bills 33.33, the remainder line (/r) of 2 units the other 66.67."""
    state = book(None, opened(lines=((3, 10_000),)), STD).state
    first = book(state, issued("o1", {"o1#1": 1}), STD)
    rest = book(first.state, issued("o1", {"o1#1/r": 2}, shipment="S2"), STD)
    assert first.vouchers[0].lines[0].debit_fen == 3_333 and rest.vouchers[0].lines[0].debit_fen == 6_667
    again = book(rest.state, issued("o1", {"o1#1/r": 2}, shipment="S3"), STD)  # nothing left to bill
    assert again.vouchers[0].lines[0].debit_fen == 0


def test_parts_of_a_line_are_billed_on_what_was_shipped_so_far_never_below_zero() -> None:
    """4 units paid 2 fen, shipped one at a time: each part bills its share of everything shipped so far, rounded,
    less what was billed before (1, 0, 1, 0) — never a part billed back. (Rounding each part alone billed 1, 1, 1
    and then −1: more than was paid, then a credit — found by the generated test below.)"""
    state = book(None, opened(lines=((4, 2),)), STD).state
    parts = []
    for n in range(4):
        step = balanced(book(state, issued("o1", {"o1#1": 1}, shipment=f"S{n}"), STD))
        state = step.state
        parts.append(step.vouchers[0].lines[0].debit_fen if step.vouchers[0].lines else 0)
    assert parts == [1, 0, 1, 0] and state.receivable_fen == 2


def test_a_goods_issue_before_the_order_waits_and_is_booked_when_the_order_comes() -> None:
    early = book(None, issued("o1", {"o1#1": 2, "o1#2": 1}), STD)
    assert early.note == "issue_before_order" and not early.vouchers
    late = balanced(book(early.state, opened(), STD))
    assert [v.voucher_id for v in late.vouchers] == ["revenue.t1.S1.o1"] and not late.state.waiting


def test_under_the_delivery_policy_goods_wait_in_goods_shipped_until_the_buyer_signs() -> None:
    """发出商品: Dr 1406 / Cr 1405 at the issue; at delivery the revenue, and Dr 6401 / Cr 1406."""
    state = book(None, opened(), DELIVERY).state
    shipped = balanced(book(state, issued("o1", {"o1#1": 2, "o1#2": 1}), DELIVERY))
    assert not shipped.vouchers and shipped.note == "revenue_deferred"
    cost = balanced(book(shipped.state, moved(CommandKind.ISSUE, -3, -21_000, "o1", "issue.t1.o1#1"), DELIVERY))
    assert lines(cost.vouchers[0]) == [("1406", 21_000, 0), ("1405", 0, 21_000)]
    assert cost.state.in_transit_fen == 21_000
    progress = OrderProgress(progress_id="p.o1.delivered", tenant=T, order_id="o1", event=ProgressEvent.DELIVERED,
                             ts=TS + 9000)  # fmt: skip
    done = balanced(book(cost.state, ProgressMade(progress=progress), DELIVERY))
    revenue, transfer = done.vouchers
    assert revenue.voucher_id == "revenue.t1.S1.o1" and lines(revenue)[0] == ("1122", 33_900, 0)
    assert transfer.kind is VoucherKind.DELIVERED_COST and lines(transfer) == [("6401", 21_000, 0), ("1406", 0, 21_000)]
    assert done.state.recognised and done.state.in_transit_fen == 0
    assert not book(done.state, ProgressMade(progress=progress), DELIVERY).vouchers  # delivered once


def test_a_store_pickup_is_recognised_at_the_hand_over_even_under_the_delivery_policy() -> None:
    state = book(None, opened(delivery="pickup", pickup_store="ST-1"), DELIVERY).state
    step = book(state, issued("o1", {"o1#1": 2}, waybills=()), DELIVERY)
    assert [v.kind for v in step.vouchers] == [VoucherKind.REVENUE]


def test_a_return_reverses_revenue_and_output_vat_and_the_goods_come_back_at_their_original_cost() -> None:
    """Refund ¥113.00: Dr 6001 100.00, Dr 2221 销项 13.00 / Cr 1122; units back at the cost they left with (the
    inventory's return event): Dr 1405 / Cr 6401."""
    state = book(book(None, opened(), STD).state, issued("o1", {"o1#1": 2, "o1#2": 1}), STD).state
    settled = ReturnSettled(
        return_id="rma-1", tenant=T, order_id="o1", warehouse="WH-A", refund_fen=11_300, ts=TS + 5000,
        lines=[SettledLine(line_id="o1#1", sku="SKU-1", quantity=1, disposition="sellable", location="WH-A",
                           refund_fen=11_300)],
    )  # fmt: skip
    step = balanced(book(state, ReturnBooked(settled=settled), STD))
    (v,) = step.vouchers
    assert v.voucher_id == "return_revenue.t1.rma-1"
    assert lines(v) == [("6001", 10_000, 0), ("2221.02", 1_300, 0), ("1122", 0, 11_300)]
    assert step.state.receivable_fen == 33_900 - 11_300
    back = balanced(book(step.state, moved(CommandKind.RETURN, 1, 1_100, "o1", "return.t1.o1#1.rma-1.0"), STD))
    assert lines(back.vouchers[0]) == [("1405", 1_100, 0), ("6401", 0, 1_100)]


def test_short_picks_and_count_differences_go_through_pending_loss_to_expense() -> None:
    loss = balanced(book(None, moved(CommandKind.SHORT, -2, -2_200, "o1", "short.t1.o1#1"), STD))
    assert [(v.kind, lines(v)) for v in loss.vouchers] == [
        (VoucherKind.STOCK_LOSS, [("1901", 2_200, 0), ("1405", 0, 2_200)]),
        (VoucherKind.LOSS_SETTLED, [("6602", 2_200, 0), ("1901", 0, 2_200)]),
    ]
    gain = balanced(book(None, moved(CommandKind.ADJUST, 3, 3_300), STD))
    assert [lines(v) for v in gain.vouchers] == [[("1405", 3_300, 0), ("1901", 0, 3_300)],
                                                 [("1901", 3_300, 0), ("6602", 0, 3_300)]]  # fmt: skip
    assert len({v.voucher_id for v in loss.vouchers + gain.vouchers}) == 4


def test_freight_books_the_carriers_price_with_transport_vat_one_payable_per_carrier() -> None:
    def parcel(pid: str, carrier: str, cost: int) -> ShippedParcel:
        return ShippedParcel(parcel_id=pid, carrier=carrier, carrier_reason="cheapest", cost_fen=cost, waybill=pid,
                             weight_g=500, volume_cm3=1000, lines=[])  # fmt: skip

    shipped = ShipmentShipped(tenant=T, shipment_id="S1", warehouse="WH-A", shop_id="s1", order_ids=["o1"], ts=TS,
                              parcels=[parcel("P1", "sf", 1_090), parcel("P2", "yto", 545)])  # fmt: skip
    (v,) = balanced(book(None, ParcelsShipped(shipped=shipped), STD)).vouchers
    assert lines(v) == [("6601.02", 1_500, 0), ("2221.01", 135, 0), ("2202", 0, 1_090), ("2202", 0, 545)]


def test_a_settlement_line_matching_the_receivable_books_commission_and_payout_and_is_answered_once() -> None:
    state = book(book(None, opened(), STD).state, issued("o1", {"o1#1": 2, "o1#2": 1}), STD).state

    def line(gross: int, fee: int, batch: str = "b1", row: int = 2) -> SettlementLine:
        return SettlementLine(line_id=f"{batch}.{row}", batch_id=batch, tenant=T, channel=Channel.TMALL,
                              order_id="o1", platform_order_id="P1", gross_fen=gross, commission_fen=fee,
                              net_fen=gross - fee, ts=TS + 86_400_000)  # fmt: skip

    wrong = book(state, line(30_000, 150), STD)
    assert [r.status for r in wrong.results] == [ReconStatus.AMOUNT_MISMATCH] and not wrong.vouchers
    assert wrong.results[0].book_receivable_fen == 33_900
    ok = balanced(book(wrong.state, line(33_900, 170, batch="b2"), STD))
    assert [r.status for r in ok.results] == [ReconStatus.MATCHED]
    fee, payout = ok.vouchers
    assert lines(fee) == [("6601.01", 170, 0), ("1122", 0, 170)]
    assert lines(payout) == [("1012", 33_730, 0), ("1122", 0, 33_730)] and ok.state.receivable_fen == 0
    again = book(ok.state, line(33_900, 170, batch="b2"), STD)  # the same file again: same answer, no booking
    assert [r.status for r in again.results] == [ReconStatus.MATCHED] and not again.vouchers
    other = book(ok.state, line(33_900, 170, batch="b3"), STD)
    assert [r.status for r in other.results] == [ReconStatus.DUPLICATE] and not other.vouchers
    nobody = book(None, line(100, 1), STD)
    assert [r.status for r in nobody.results] == [ReconStatus.MISSING_IN_BOOKS]
    special = LedgerPolicy(commission_vat_bp=600)  # a 6 % special invoice: input VAT on the fee
    (fee6, _) = book(wrong.state, line(33_900, 106, batch="b4"), special).vouchers
    assert lines(fee6) == [("6601.01", 100, 0), ("2221.01", 6, 0), ("1122", 0, 106)]


def test_a_tenants_chart_renames_accounts_by_role() -> None:
    own = LedgerPolicy(accounts={AccountRole.FREIGHT: Account(code="6401.09", name="主营业务成本—运费")})
    shipped = ShipmentShipped(tenant=T, shipment_id="S1", warehouse="WH-A", shop_id="s1", order_ids=["o1"], ts=TS,
        parcels=[ShippedParcel(parcel_id="P", carrier="sf", carrier_reason="x", cost_fen=109, waybill="W",
                               weight_g=1, volume_cm3=1, lines=[])])  # fmt: skip
    (v,) = book(None, ParcelsShipped(shipped=shipped), own).vouchers
    assert v.lines[0].account == "6401.09" and v.lines[1].account == STANDARD[AccountRole.INPUT_VAT].code


def test_booking_is_pure_and_a_replay_gives_byte_identical_vouchers() -> None:
    records = [opened(), issued("o1", {"o1#1": 2, "o1#2": 1}), moved(CommandKind.ISSUE, -2, -15_000, "o1")]

    def run() -> list[bytes]:
        state, out = None, []
        for record in records:
            before = msgspec.json.encode(state)
            step = book(state, record, STD)
            assert msgspec.json.encode(state) == before  # the input state is never modified
            state = step.state if step.changed else state
            out += [msgspec.json.encode(v) for v in step.vouchers]
        return out

    assert run() == run()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 9), st.integers(0, 500_000)), min_size=1, max_size=4),
    st.lists(st.integers(0, 3), min_size=1, max_size=6),
    st.sampled_from([STD, DELIVERY]),
)
def test_any_order_shipped_in_any_parts_balances_bills_what_was_paid_and_sums_to_zero(
    sold: list[tuple[int, int]], splits: list[int], policy: LedgerPolicy
) -> None:
    state: OrderBook | None = book(None, opened(lines=tuple(sold)), policy).state
    balance = TrialBalance(tenant=T)
    left = {f"o1#{i + 1}": q for i, (q, _) in enumerate(sold)}
    for n, take in enumerate(splits):
        units = {line: min(take, q) for line, q in left.items() if min(take, q) > 0}
        if not units:
            continue
        step = balanced(book(state, issued("o1", units, shipment=f"S{n}"), policy))
        state = step.state
        for voucher in step.vouchers:
            post(balance, voucher)
        left = {line: q - units.get(line, 0) for line, q in left.items()}
    if all(q == 0 for q in left.values()):
        progress = OrderProgress(progress_id="d", tenant=T, order_id="o1", event=ProgressEvent.DELIVERED, ts=TS)
        for voucher in balanced(book(state, ProgressMade(progress=progress), policy)).vouchers:
            post(balance, voucher)
        assert balance.accounts["1122"].debit_fen == sum(paid for _, paid in sold)  # billed exactly what was paid
    assert sum(a.debit_fen for a in balance.accounts.values()) == sum(a.credit_fen for a in balance.accounts.values())
