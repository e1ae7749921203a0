"""The books (总账), pure: business events in, balanced vouchers out (业财一体化). ``book(state, record, policy)``.

Templates (account roles; codes and names come from the tenant's chart, agents.ledger.chart):

* receipt (``StockMoved`` receive): Dr inventory (its value) + Dr input VAT / Cr payable;
* goods issued (``GoodsIssued``), revenue: Dr receivable—<channel> (what the buyer paid for the units) /
  Cr revenue + Cr output VAT (price/VAT split, agents.ledger.tax);
* cost (``StockMoved`` issue, one per line issued): Dr cost / Cr inventory at the moving-average cost the
  inventory took the units out at — or Dr goods shipped (发出商品) while revenue waits for delivery;
* delivered (under the delivery policy): the revenue of every goods issue of the order, and Dr cost /
  Cr goods shipped for what is in transit;
* freight (``ParcelsShipped``): Dr freight + Dr input VAT (9 %) / Cr payable—<carrier>, the rate table's price;
* return (``ReturnBooked``): Dr revenue + Dr output VAT / Cr receivable, the refund; and (``StockMoved``
  return) Dr inventory / Cr cost at the cost the units left with;
* stock loss or gain (short pick, count adjustment): Dr pending loss / Cr inventory (or the reverse), then
  settled to admin expense at once (a normal loss, 管理费用);
* settlement line (``SettlementLine``) matching the order's open receivable: Dr commission (+ input VAT with a
  special invoice) / Cr receivable, and Dr wallet—<channel> / Cr receivable, the payout.

A voucher's id is ``<kind>.<tenant>.<source event id>``: one per source event and kind, so a redelivery or a
replay books nothing twice (and I5 can count them). Time is the source record's time; the book date is its
China date (UTC+8).

The state is per order (key ``tenant:order_id``): what was sold (to price a goods issue), what revenue was
recognised per line, the cost in transit under the delivery policy, the open receivable and the settlement
lines applied. Receipts, adjustments and freight need no state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec

from agents.ledger.chart import account
from agents.ledger.costing import round_half_up
from agents.ledger.tax import split_gross
from schemas.aftersales import OrderOpened
from schemas.inventory import CommandKind, StockEvent
from schemas.ledger import (
    AccountRole,
    LedgerPolicy,
    LedgerRecord,
    ParcelsShipped,
    ProgressMade,
    Recognition,
    Reconciliation,
    ReconStatus,
    ReturnBooked,
    SettlementLine,
    StockMoved,
    Voucher,
    VoucherKind,
    VoucherLine,
    voucher_id,
)
from schemas.order import Channel, root_line
from schemas.shipping import GoodsIssued

CHINA_OFFSET_S = 8 * 3600
#: Settlement lines remembered per order (a re-sent file is answered the same, not booked again).
MAX_SETTLEMENTS = 32


class SoldLine(msgspec.Struct, array_like=True):
    sku: str
    quantity: int
    paid_fen: int


class Billed(msgspec.Struct, array_like=True):
    units: int
    gross_fen: int


class Deferred(msgspec.Struct, array_like=True):
    """A goods issue whose revenue waits for delivery (the delivery policy)."""

    issue_id: str
    gross_fen: int
    ts: int


class OrderBook(msgspec.Struct, kw_only=True):
    """What the books know of one order."""

    tenant: str
    order_id: str
    channel: str | None = None
    lines: dict[str, SoldLine] = msgspec.field(default_factory=dict)  # order line -> what was sold
    billed: dict[str, Billed] = msgspec.field(default_factory=dict)  # order line -> revenue recognised so far
    waiting: list[GoodsIssued] = msgspec.field(default_factory=list)  # goods issues that came before the order
    deferred: list[Deferred] = msgspec.field(default_factory=list)
    recognised: bool = False  # under the delivery policy: delivered (or returned), revenue recognised
    in_transit_fen: int = 0  # cost in goods shipped (发出商品), delivery policy
    receivable_fen: int = 0  # open receivable: revenue gross − refunds − settled
    settlements: dict[str, str] = msgspec.field(default_factory=dict)  # settlement line id -> status
    last_ts: int = 0


@dataclass(slots=True)
class Step:
    state: OrderBook | None
    changed: bool = False
    vouchers: list[Voucher] = field(default_factory=list)
    results: list[Reconciliation] = field(default_factory=list)
    note: str = ""
    refused: tuple[str, str] | None = None  # (reason code, detail): a record that cannot be booked


def book_date(ts_ms: int) -> str:
    """The accounting date of a record time: its date in China (UTC+8), from the record, never the clock."""
    return time.strftime("%Y-%m-%d", time.gmtime(ts_ms // 1000 + CHINA_OFFSET_S))


class _Voucher:
    """Builds one voucher's lines; amounts may come negative (a red-letter line goes to the other side)."""

    def __init__(self, policy: LedgerPolicy) -> None:
        self.policy = policy
        self.lines: list[VoucherLine] = []

    def dr(self, role: AccountRole, amount: int, sub: str = "") -> _Voucher:
        return self._line(role, amount, 0, sub) if amount >= 0 else self._line(role, 0, -amount, sub)

    def cr(self, role: AccountRole, amount: int, sub: str = "") -> _Voucher:
        return self._line(role, 0, amount, sub) if amount >= 0 else self._line(role, -amount, 0, sub)

    def _line(self, role: AccountRole, debit: int, credit: int, sub: str) -> _Voucher:
        acct = account(self.policy, role)
        self.lines.append(VoucherLine(account=acct.code, name=acct.name, debit_fen=debit, credit_fen=credit, sub=sub))
        return self

    def build(
        self,
        kind: VoucherKind,
        tenant: str,
        source_id: str,
        entity: str,
        ts: int,
        version: int,
        order_id: str | None = None,
        channel: str | None = None,
    ) -> Voucher:
        return Voucher(
            voucher_id=voucher_id(kind, tenant, source_id),
            tenant=tenant,
            kind=kind,
            source_id=source_id,
            entity=entity,
            order_id=order_id,
            channel=Channel(channel) if channel else None,
            book_date=book_date(ts),
            policy_version=version,
            lines=self.lines,
            ts=ts,
        )


def book(state: OrderBook | None, record: LedgerRecord, policy: LedgerPolicy, version: int = 0) -> Step:
    """Book one business event. Pure: ``state`` is not modified (a changed state is a new object)."""
    if isinstance(record, StockMoved):
        return _stock(state, record.event, policy, version)
    if isinstance(record, ParcelsShipped):
        return Step(state, vouchers=_freight(record, policy, version))
    new = _copy(state) if state is not None else None
    if isinstance(record, OrderOpened):
        return _opened(new, record, policy, version)
    if isinstance(record, GoodsIssued):
        if new is None or not new.lines:  # the issue overtook the order (other producers): book it when it comes
            new = new or OrderBook(tenant=record.tenant, order_id=record.order_id)
            new.waiting.append(record)
            return Step(new, changed=True, note="issue_before_order")
        step = Step(new, changed=True)
        _issued(new, record, policy, version, step)
        return step
    if isinstance(record, ProgressMade):
        if new is None or record.progress.event != "delivered" or new.recognised or not new.lines:
            return Step(state)
        step = Step(new, changed=True)
        _recognise(new, record.progress.progress_id, record.progress.ts, policy, version, step)
        return step
    if isinstance(record, ReturnBooked):
        return _returned(new, record, policy, version)
    if isinstance(record, SettlementLine):
        return _settle(new, record, policy, version)
    raise TypeError(f"not a ledger record: {type(record).__name__}")  # pragma: no cover - the union is closed


def _copy(state: OrderBook) -> OrderBook:
    return msgspec.convert(msgspec.to_builtins(state), OrderBook)


def _defers(policy: LedgerPolicy, book_: OrderBook | None) -> bool:
    """Revenue (and cost) of this order waits for delivery."""
    return policy.recognition is Recognition.DELIVERY and not (book_ is not None and book_.recognised)


def _opened(new: OrderBook | None, opened: OrderOpened, policy: LedgerPolicy, version: int) -> Step:
    if new is not None and new.lines:
        return Step(new, note="duplicate")  # approved once: a redelivery
    new = new or OrderBook(tenant=opened.tenant, order_id=opened.order_id)
    new.channel = opened.channel.value
    new.recognised = opened.delivery != "ship"  # handed over in a store: control passes at the hand-over
    new.lines = {ln.line_id: SoldLine(ln.sku, ln.quantity, ln.paid_fen) for ln in opened.lines}
    step = Step(new, changed=True)
    waiting, new.waiting = new.waiting, []
    for raw in waiting:
        _issued(new, raw, policy, version, step)
    return step


def _gross(new: OrderBook, issued: GoodsIssued) -> tuple[int, list[str]]:
    """What the buyer paid for the units of this goods issue: each line's paid amount pro rata to its units,
    allocated on the units shipped so far (the line's share of everything shipped, rounded, less what was billed
    before), so every part is at least 0 and the units that complete a line take exactly what is left of it:
    never a fen lost, billed twice, or billed back (4 units paid 2 fen, shipped one by one: 1, 0, 1, 0)."""
    gross, unknown = 0, []
    for packed in issued.lines:
        root = root_line(packed.line_id)
        sold = new.lines.get(root)
        if sold is None:
            unknown.append(packed.line_id)
            continue
        billed = new.billed.get(root) or Billed(0, 0)
        units = min(packed.units, sold.quantity - billed.units)
        if units <= 0:
            continue
        if billed.units + units == sold.quantity:
            amount = sold.paid_fen - billed.gross_fen
        else:
            amount = round_half_up(sold.paid_fen * (billed.units + units), sold.quantity) - billed.gross_fen
        new.billed[root] = Billed(billed.units + units, billed.gross_fen + amount)
        gross += amount
    return gross, unknown


def _issued(new: OrderBook, issued: GoodsIssued, policy: LedgerPolicy, version: int, step: Step) -> None:
    gross, unknown = _gross(new, issued)
    if unknown:
        step.note = "unknown_lines"
    if _defers(policy, new):
        new.deferred.append(Deferred(issued.issue_id, gross, issued.ts))
        step.note = step.note or "revenue_deferred"
        return
    step.vouchers.append(_revenue(new, issued.issue_id, gross, issued.ts, policy, version))


def _revenue(new: OrderBook, issue_id: str, gross: int, ts: int, policy: LedgerPolicy, version: int) -> Voucher:
    net, vat = split_gross(gross, policy.output_vat_bp)
    new.receivable_fen += gross
    channel = new.channel or ""
    v = _Voucher(policy).dr(AccountRole.RECEIVABLE, gross, channel).cr(AccountRole.REVENUE, net, channel)
    v.cr(AccountRole.OUTPUT_VAT, vat)
    return v.build(VoucherKind.REVENUE, new.tenant, issue_id, new.order_id, ts, version, new.order_id, new.channel)


def _recognise(new: OrderBook, source_id: str, ts: int, policy: LedgerPolicy, version: int, step: Step) -> None:
    """Control passed (delivered, or the goods came back): revenue of every deferred issue, and what is in
    transit to cost."""
    new.recognised = True
    for deferred in new.deferred:
        step.vouchers.append(_revenue(new, deferred.issue_id, deferred.gross_fen, deferred.ts, policy, version))
    new.deferred = []
    if new.in_transit_fen:
        v = _Voucher(policy).dr(AccountRole.COST, new.in_transit_fen).cr(AccountRole.GOODS_SHIPPED, new.in_transit_fen)
        step.vouchers.append(
            v.build(
                VoucherKind.DELIVERED_COST, new.tenant, source_id, new.order_id, ts, version, new.order_id, new.channel
            )
        )
        new.in_transit_fen = 0


def _returned(new: OrderBook | None, booked: ReturnBooked, policy: LedgerPolicy, version: int) -> Step:
    settled = booked.settled
    if new is None or not new.lines:
        return Step(new, refused=("invalid_record", f"return {settled.return_id} of an order the books never saw"))
    step = Step(new, changed=True)
    if policy.recognition is Recognition.DELIVERY and not new.recognised:
        _recognise(new, f"{settled.return_id}.recognised", settled.ts, policy, version, step)
    refund = settled.refund_fen
    net, vat = split_gross(refund, policy.output_vat_bp)
    channel = new.channel or ""
    new.receivable_fen -= refund
    v = _Voucher(policy).dr(AccountRole.REVENUE, net, channel).dr(AccountRole.OUTPUT_VAT, vat)
    v.cr(AccountRole.RECEIVABLE, refund, channel)
    step.vouchers.append(
        v.build(
            VoucherKind.RETURN_REVENUE,
            new.tenant,
            settled.return_id,
            new.order_id,
            settled.ts,
            version,
            new.order_id,
            new.channel,
        )
    )
    return step


def _stock(state: OrderBook | None, event: StockEvent, policy: LedgerPolicy, version: int) -> Step:
    """The value side of a stock change, as the inventory valued it (so books and warehouse agree)."""
    value = event.d_value_fen
    where = f"{event.warehouse}/{event.sku}"
    tenant, order = event.tenant, event.order_id
    entity = order or event.sku
    channel = state.channel if state is not None else None
    step = Step(state)

    def add(kind: VoucherKind, v: _Voucher) -> None:
        step.vouchers.append(v.build(kind, tenant, event.event_id, entity, event.ts, version, order, channel))

    if event.kind is CommandKind.RECEIVE:
        vat = round_half_up(value * policy.input_vat_bp, 10_000)
        v = _Voucher(policy).dr(AccountRole.INVENTORY, value, where).dr(AccountRole.INPUT_VAT, vat)
        add(VoucherKind.RECEIPT, v.cr(AccountRole.PAYABLE, value + vat))
    elif event.kind is CommandKind.ISSUE:
        cost = -value
        if order is not None and _defers(policy, state):
            new = _copy(state) if state is not None else OrderBook(tenant=tenant, order_id=order)
            new.in_transit_fen += cost
            step.state, step.changed = new, True
            add(
                VoucherKind.COST,
                _Voucher(policy).dr(AccountRole.GOODS_SHIPPED, cost).cr(AccountRole.INVENTORY, cost, where),
            )
        else:
            add(VoucherKind.COST, _Voucher(policy).dr(AccountRole.COST, cost).cr(AccountRole.INVENTORY, cost, where))
    elif event.kind is CommandKind.RETURN:
        if _defers(policy, state) and state is not None and state.in_transit_fen:
            new = _copy(state)
            new.in_transit_fen -= value
            step.state, step.changed = new, True
            back = AccountRole.GOODS_SHIPPED
        else:
            back = AccountRole.COST
        add(VoucherKind.RETURN_COST, _Voucher(policy).dr(AccountRole.INVENTORY, value, where).cr(back, value))
    elif event.d_on_hand < 0:  # a short pick or a count loss (盘亏)
        loss = -value
        add(
            VoucherKind.STOCK_LOSS,
            _Voucher(policy).dr(AccountRole.PENDING_LOSS, loss).cr(AccountRole.INVENTORY, loss, where),
        )
        add(
            VoucherKind.LOSS_SETTLED,
            _Voucher(policy).dr(AccountRole.ADMIN_EXPENSE, loss).cr(AccountRole.PENDING_LOSS, loss),
        )
    elif event.d_on_hand > 0:  # a count gain (盘盈)
        add(
            VoucherKind.STOCK_GAIN,
            _Voucher(policy).dr(AccountRole.INVENTORY, value, where).cr(AccountRole.PENDING_LOSS, value),
        )
        add(
            VoucherKind.LOSS_SETTLED,
            _Voucher(policy).dr(AccountRole.PENDING_LOSS, value).cr(AccountRole.ADMIN_EXPENSE, value),
        )
    else:
        step.note = "no_value_change"
    return step


def _freight(record: ParcelsShipped, policy: LedgerPolicy, version: int) -> list[Voucher]:
    """Outbound freight of a shipment at the rate table's price (tax-inclusive), one payable per carrier."""
    shipped = record.shipped
    by_carrier: dict[str, int] = {}
    for parcel in shipped.parcels:
        if parcel.cost_fen:
            by_carrier[parcel.carrier] = by_carrier.get(parcel.carrier, 0) + parcel.cost_fen
    total = sum(by_carrier.values())
    if not total:
        return []
    net, vat = split_gross(total, policy.freight_vat_bp)
    v = _Voucher(policy).dr(AccountRole.FREIGHT, net, shipped.warehouse).dr(AccountRole.INPUT_VAT, vat)
    for carrier, amount in sorted(by_carrier.items()):
        v.cr(AccountRole.PAYABLE, amount, carrier)
    return [v.build(VoucherKind.FREIGHT, shipped.tenant, shipped.shipment_id, shipped.shipment_id, shipped.ts, version)]


def _settle(new: OrderBook | None, line: SettlementLine, policy: LedgerPolicy, version: int) -> Step:
    """Match one settlement line against the order's open receivable (对账); book commission and payout when
    they agree."""

    def result(status: ReconStatus, book_fen: int | None, detail: str = "") -> Reconciliation:
        return Reconciliation(
            result_id=f"recon.{line.tenant}.{line.batch_id}.{line.order_id}",
            batch_id=line.batch_id,
            tenant=line.tenant,
            order_id=line.order_id,
            platform_order_id=line.platform_order_id,
            channel=line.channel,
            status=status,
            file_gross_fen=line.gross_fen,
            book_receivable_fen=book_fen,
            commission_fen=line.commission_fen,
            net_fen=line.net_fen,
            detail=detail,
            ts=line.ts,
        )

    if new is None or not new.lines:
        return Step(new, results=[result(ReconStatus.MISSING_IN_BOOKS, None, "no receivable for this order")])
    before = new.settlements.get(line.line_id)
    if before is not None:  # the same line again (the file sent twice): its first answer again, nothing booked
        again = result(ReconStatus(before), None, "this settlement line was applied before")
        return Step(new, results=[again], note="settlement_again")
    step = Step(new, changed=True)
    open_fen = new.receivable_fen
    if any(s == ReconStatus.MATCHED for s in new.settlements.values()) and open_fen == 0:
        status = ReconStatus.DUPLICATE
        step.results.append(result(status, open_fen, "the order was settled by an earlier line"))
    elif line.gross_fen != open_fen or line.net_fen != line.gross_fen - line.commission_fen:
        status = ReconStatus.AMOUNT_MISMATCH
        step.results.append(result(status, open_fen, f"file gross {line.gross_fen}, books {open_fen}"))
    else:
        status = ReconStatus.MATCHED
        step.results.append(result(status, open_fen))
        channel = new.channel or ""
        fee_net, fee_vat = split_gross(line.commission_fen, policy.commission_vat_bp)
        fee = _Voucher(policy).dr(AccountRole.COMMISSION, fee_net, channel)
        if fee_vat:
            fee.dr(AccountRole.INPUT_VAT, fee_vat)
        fee.cr(AccountRole.RECEIVABLE, line.commission_fen, channel)
        payout = _Voucher(policy).dr(AccountRole.WALLET, line.net_fen, channel)
        payout.cr(AccountRole.RECEIVABLE, line.net_fen, channel)
        for kind, v in ((VoucherKind.COMMISSION, fee), (VoucherKind.PAYOUT, payout)):
            step.vouchers.append(
                v.build(kind, new.tenant, line.line_id, new.order_id, line.ts, version, new.order_id, new.channel)
            )
        new.receivable_fen -= line.gross_fen
    new.settlements[line.line_id] = status.value
    if len(new.settlements) > MAX_SETTLEMENTS:
        new.settlements.pop(next(iter(new.settlements)))
    return step
