"""I5 — the books balance, judged against the inputs (pure).

* Every voucher balances (Σ debit = Σ credit, no line on both sides); a voucher id is never written twice with
  different contents.
* One revenue voucher per goods issue (order and shipment) and one cost voucher per issue of a line (the
  inventory's issue event), with the cost the goods left with; one revenue reversal per settled return, for the
  refund; nothing booked twice, nothing booked for an event that did not happen.
* Revenue of an order shipped whole is what the buyer paid for it, as *sent* (the lines' paid amounts).
* The valuation follows the moving-average rule from the receipts *sent*: each receipt enters at the quantity
  and unit cost sent; each outflow takes round-half-up(value × units ÷ on hand) — the last units exactly what is
  left — so no value appears or vanishes; per warehouse the value chains from event to event.
* The trial balance of each tenant sums to zero, and its inventory account equals Σ value on hand per SKU and
  warehouse (账实相符): the books and the warehouse agree.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from invariants.contract import outflow_value
from schemas.inventory import CommandKind, Receive, StockEvent
from schemas.ledger import Voucher, VoucherKind, check_balanced
from schemas.order import line_id, root_line

INVENTORY_CODE = "1405"  # the standard chart's 库存商品 (the main job and tests use the standard chart)


def check_ledger(
    inputs: Any, out: Any, applied: dict[str, StockEvent], v: Any, inventory_code: str = INVENTORY_CODE
) -> None:
    vouchers = _unique(out, v)
    _balanced(vouchers, v)
    _revenue(inputs, out, vouchers, v)
    _costs(inputs, applied, vouchers, v)
    _returns(out, vouchers, v)
    _trial_balance(applied, vouchers, v, inventory_code)
    v.counts["vouchers"] = len(vouchers)


def _unique(out: Any, v: Any) -> dict[str, Voucher]:
    first: dict[str, Voucher] = {}
    for voucher_id, copies in out.voucher_bytes.items():
        if len(copies) > 1:
            v.fail("I5", f"voucher {voucher_id} written {len(copies)} times with different contents")
    for voucher in out.vouchers:
        first.setdefault(voucher.voucher_id, voucher)
    return first


def _balanced(vouchers: dict[str, Voucher], v: Any) -> None:
    for voucher in vouchers.values():
        why = check_balanced(voucher)
        if why:
            v.fail("I5", why)


def _by_kind(vouchers: dict[str, Voucher], kind: VoucherKind) -> dict[str, Voucher]:
    """Vouchers of one kind by their source event."""
    return {x.source_id: x for x in vouchers.values() if x.kind is kind}


def _revenue(inputs: Any, out: Any, vouchers: dict[str, Voucher], v: Any) -> None:
    revenue = _by_kind(vouchers, VoucherKind.REVENUE)
    issues = {g.issue_id: g for g in out.goods_issued}
    for issue_id in issues.keys() - revenue.keys():
        if not inputs.revenue_deferred:
            v.fail("I5", f"goods issue {issue_id} has no revenue voucher")
    for source in revenue.keys() - issues.keys():
        v.fail("I5", f"revenue voucher for {source}, which is no goods issue")
    # an order shipped whole bills exactly what its buyer paid, as sent
    paid: dict[tuple[str, str], dict[str, tuple[int, int]]] = {}
    for sent in inputs.orders.values():
        versions = {
            tuple(
                (
                    line_id(o.order_id, ln.line_no),
                    ln.quantity,
                    ln.unit_price_fen * ln.quantity if ln.paid_fen is None else ln.paid_fen,
                )
                for ln in o.lines
            )
            for o in sent.snapshots
        }
        if len(versions) == 1 and not sent.closed_lines():  # what was paid never changed: the truth is plain
            paid[(sent.tenant, sent.order_id)] = {line: (q, amount) for line, q, amount in versions.pop()}
    shipped: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    billed: dict[tuple[str, str], int] = defaultdict(int)
    for issue_id, issued in issues.items():
        key = (issued.tenant, issued.order_id)
        for line in issued.lines:
            shipped[key][root_line(line.line_id)] += line.units
        if issue_id in revenue:
            billed[key] += revenue[issue_id].debit_fen
    for key, units in shipped.items():
        lines = paid.get(key)
        if lines is None:
            continue
        if all(units.get(line, 0) == q for line, (q, _) in lines.items()) and key in billed:
            want = sum(amount for _, amount in lines.values())
            if billed[key] != want:
                v.fail("I5", f"order {key[1]} shipped whole billed {billed[key]} fen, its buyer paid {want}")


def _costs(inputs: Any, applied: dict[str, StockEvent], vouchers: dict[str, Voucher], v: Any) -> None:
    """Each issue event has one cost voucher at its cost; every valued event follows the moving-average rule."""
    costs = _by_kind(vouchers, VoucherKind.COST)
    issues = {e.event_id: e for e in applied.values() if e.kind is CommandKind.ISSUE and e.d_on_hand < 0}
    for event_id, event in issues.items():
        voucher = costs.get(event_id)
        if voucher is None:
            v.fail("I5", f"issue {event_id} has no cost voucher")
        elif voucher.debit_fen != -event.d_value_fen:
            v.fail(
                "I5", f"cost voucher of {event_id} books {voucher.debit_fen}, the goods left at {-event.d_value_fen}"
            )
    for source in costs.keys() - issues.keys():
        v.fail("I5", f"cost voucher for {source}, which is no issue")
    sent_cost = {
        c.command_id: c.quantity * c.unit_cost_fen
        for c in inputs.stock
        if isinstance(c, Receive) and c.unit_cost_fen is not None
    }
    chains: dict[tuple[str, str, str], list[StockEvent]] = defaultdict(list)
    for event in applied.values():
        chains[(event.tenant, event.sku, event.warehouse)].append(event)
    for (_, sku, warehouse), events in chains.items():
        value = on_hand = 0
        for event in sorted(events, key=lambda e: e.version):
            sent = sent_cost.get(event.event_id) if event.kind is CommandKind.RECEIVE else None
            if sent is not None and event.d_value_fen != sent:
                v.fail("I5", f"receipt {event.event_id} valued {event.d_value_fen}, sent {sent}")
            if event.d_on_hand < 0:
                units = -event.d_on_hand
                want = outflow_value(value, units, on_hand)
                if -event.d_value_fen != want:
                    v.fail(
                        "I5",
                        f"{event.event_id} took {-event.d_value_fen} fen for {units} of {on_hand} units worth {value}: "
                        f"the moving average says {want}",
                    )
            value += event.d_value_fen
            on_hand += event.d_on_hand
            if event.value_fen != value or value < 0 or (on_hand == 0 and value != 0):
                v.fail(
                    "I5",
                    f"{sku}@{warehouse} v{event.version}: value {event.value_fen}, "
                    f"its events add up to {value} for {on_hand} units",
                )
                break


def _returns(out: Any, vouchers: dict[str, Voucher], v: Any) -> None:
    reversals = _by_kind(vouchers, VoucherKind.RETURN_REVENUE)
    for settled in {s.return_id: s for s in out.returns_settled}.values():
        voucher = reversals.get(settled.return_id)
        if voucher is None:
            v.fail("I5", f"return {settled.return_id} has no revenue reversal")
        elif voucher.credit_fen != settled.refund_fen:
            v.fail("I5", f"return {settled.return_id} reversed {voucher.credit_fen}, refunded {settled.refund_fen}")


def _trial_balance(applied: dict[str, StockEvent], vouchers: dict[str, Voucher], v: Any, inventory_code: str) -> None:
    debit: dict[str, int] = defaultdict(int)
    credit: dict[str, int] = defaultdict(int)
    stock_books: dict[str, int] = defaultdict(int)
    for voucher in vouchers.values():
        debit[voucher.tenant] += voucher.debit_fen
        credit[voucher.tenant] += voucher.credit_fen
        for line in voucher.lines:
            if line.account == inventory_code:
                stock_books[voucher.tenant] += line.debit_fen - line.credit_fen
    for tenant in debit:
        if debit[tenant] != credit[tenant]:
            v.fail("I5", f"{tenant}: trial balance is off by {debit[tenant] - credit[tenant]} fen")
    latest: dict[tuple[str, str, str], StockEvent] = {}
    for event in applied.values():
        at = (event.tenant, event.sku, event.warehouse)
        if at not in latest or event.version > latest[at].version:
            latest[at] = event
    warehouse_value: dict[str, int] = defaultdict(int)
    for (tenant, _, _), event in latest.items():
        warehouse_value[tenant] += event.value_fen
    for tenant in set(warehouse_value) | set(stock_books):
        if stock_books[tenant] != warehouse_value[tenant]:
            v.fail(
                "I5",
                f"{tenant}: inventory in the books {stock_books[tenant]} fen, "
                f"in the warehouse {warehouse_value[tenant]}",
            )
    v.counts["inventory_value_fen"] = sum(warehouse_value.values())
