"""Finance on the real broker and the real PostgreSQL: a day of business — receipts at two costs, orders of three
channels shipped, a replenishment at a new cost, a return after that price change, a count loss, settlement lines
— with a worker killed (SIGKILL) while vouchers flow. Then I5 from the vouchers topic (with every other invariant,
against what was sent) and from the database the sink wrote: every voucher balances, one revenue voucher per goods
issue and one cost voucher per issue, no duplicate rows, the trial balance is zero and the inventory in the books
is the value on hand in the warehouse."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest

from agents.fulfilment.layout import generate_layout
from agents.fulfilment.picking import report
from agents.fulfilment.publish import publish_layouts
from agents.ledger.reconcile import SettleOptions, settle
from agents.ledger.sink import read_books
from schemas import wire
from schemas.aftersales import ProgressEvent, ReceivedLine, ReturnReceived
from schemas.fulfilment import PickList, WavePolicy
from schemas.inventory import Adjust, Receive, adjust_id, receive_id
from schemas.ledger import ReconStatus, VoucherKind
from schemas.order import Address, Buyer, Channel, Order, OrderLine, OrderStatus, order_id
from tests.pipeline.harness import Pipeline, http, wait_for
from tests.pipeline.test_channels_pipeline import auth
from tests.pipeline.test_reservation_pipeline import assert_invariants
from workload.delivery import Credentials
from workload.generator import DAY_START_MS

pytestmark = pytest.mark.pipeline

SKUS = ["LG-A", "LG-B", "LG-C", "LG-D"]
WAREHOUSES = ["WH-SH", "WH-BJ"]
HANGZHOU = Address(name="赵六", phone="13700001234", province="浙江省", city="杭州市", street="文三路 8 号")


def receipt(sku: str, wh: str, qty: int, unit_cost: int, doc: str, seq: int) -> Receive:
    return Receive(
        command_id=receive_id("acme", sku, wh, doc), tenant="acme", sku=sku, origin="ledger-loader", seq=seq, ts=1,
        warehouse=wh, quantity=qty, unit_cost_fen=unit_cost, document_id=doc,
    )  # fmt: skip


def orders(n: int, at: int, rng: random.Random) -> list[Order]:
    channels = [Channel.TMALL, Channel.JD, Channel.WEB]
    out = []
    for i in range(n):
        channel = channels[i % 3]
        shop = f"{channel.value}-1"
        picked = [(sku, rng.randint(1, 3), rng.choice((1_990, 2_990, 12_900))) for sku in rng.sample(SKUS, 2)]
        lines = [
            OrderLine(line_no=k + 1, sku=sku, quantity=q, unit_price_fen=price, paid_fen=price * q - rng.randint(0, 99))
            for k, (sku, q, price) in enumerate(picked)
        ]
        out.append(
            Order(
                tenant="acme", order_id=order_id(channel, shop, f"lg{i}"), channel=channel, shop_id=shop,
                platform_order_id=f"lg{i}", status=OrderStatus.PAID, buyer=Buyer(id=f"lg-buyer-{i}"),
                receiver=HANGZHOU, lines=lines, created_at=at + i, ingested_at=at + i, version=at + i,
            )
        )  # fmt: skip
    return out


def test_a_day_is_booked_once_balanced_through_a_crash_and_lands_in_postgres_once(
    pipeline: Pipeline, credentials: Credentials, tmp_path: Path
) -> None:
    waves = WavePolicy(release_count=8, release_after_s=1)
    publish_layouts(
        pipeline.settings, [generate_layout("acme", WAREHOUSES, SKUS, merge_window_s=1, waves=waves)], "test-layouts"
    )
    opening = [receipt(s, wh, 40, 1_000 + 100 * i, "r1", 2 * i + j + 1)
               for i, s in enumerate(SKUS) for j, wh in enumerate(WAREHOUSES)]  # fmt: skip
    second = [receipt(s, "WH-SH", 20, 1_300 + 100 * i, "r2", 20 + i) for i, s in enumerate(SKUS)]  # a dearer batch
    pipeline.send_commands(opening + second)
    pool = pipeline.start_workers(2)
    rng = random.Random(5)
    now = DAY_START_MS + 10 * 3_600_000
    day = orders(48, now, rng)
    pipeline.send_orders(day)
    pipeline.wait_decisions(len(day), timeout_s=180, pool=pool)

    # -- picking: every pick list confirmed as asked; a worker killed while the ledger books ----------------------
    confirmed: set[str] = set()
    killed_at: list[int] = []

    def pick(most: int | None = None) -> None:
        lists = {p.pick_list_id: p for p in pipeline.read(pipeline.topics.pick_lists, PickList)}
        for pid, pick_list in sorted(lists.items()):
            if pid not in confirmed and (most is None or len(confirmed) < most):
                confirmation = report(pick_list, DAY_START_MS)
                pipeline.inputs.picks.append(confirmation)
                pipeline.send(pipeline.topics.fulfilment_inbox, [confirmation])
                confirmed.add(pid)

    def vouchers() -> int:
        return len(pipeline.outputs().vouchers)

    def booked_some() -> bool:  # one pick list only before the kill: the rest is booked after it
        pick(most=1)
        pool.supervise()
        return any(v.kind is VoucherKind.REVENUE for v in pipeline.outputs().vouchers)

    wait_for(booked_some, 180, "the first vouchers")
    accepted = {d.order_id for d in pipeline.decisions().values() if d.status.value == "accepted"}
    victim = [a for a in (pool.readiness(1) or {}).get("active", []) if pipeline.topics.ledger_inbox in a]
    assert victim, "the worker to kill owns no ledger partition"
    killed_at.append(vouchers())
    pool.kill(1)  # SIGKILL mid-stream: its ledger transactions may be open
    shipped_orders: set[str] = set()

    def shipped_all() -> bool:
        pick()
        pool.supervise()
        out = pipeline.outputs()
        shipped_orders.clear()
        shipped_orders.update(g.order_id for g in out.goods_issued)
        return accepted <= shipped_orders

    wait_for(shipped_all, 240, "every accepted order shipped")
    assert [r.index for r in pool.restarts] == [1] and pool.restarts[0].exit_code == -9
    assert vouchers() > killed_at[0], "nothing was booked after the kill: it did not overlap the booking"

    # -- a replenishment at a new cost, then a return after the price change; a count loss ----------------------
    pipeline.send_commands([receipt("LG-A", "WH-SH", 30, 800, "r3", 40)])
    returned = sorted(shipped_orders)[0]
    sold = next(o for o in day if o.order_id == returned)
    line = f"{returned}#1"
    url = pipeline.api(f"/api/v1/acme/orders/{returned}/returns")
    qty = sold.lines[0].quantity
    status, answer = http("POST", url, {"return_id": "RMA-L1", "lines": [{"line_id": line, "quantity": qty}]},
                          auth(credentials))  # fmt: skip
    assert status == 202, answer
    received = ReturnReceived(tenant="acme", order_id=returned, return_id="RMA-L1", warehouse="WH-SH", ts=0,
                              lines=[ReceivedLine(line_id=line, quantity=qty, disposition="sellable")])  # fmt: skip
    body = {"warehouse": "WH-SH", "lines": [wire.to_builtins(ln) for ln in received.lines]}
    status, answer = http("POST", f"{url}/RMA-L1/receipt", body, auth(credentials))
    assert status == 202, answer
    pipeline.inputs.return_receipts.append(received)
    loss = Adjust(command_id=adjust_id("acme", "LG-B", "WH-BJ", "count-1"), tenant="acme", sku="LG-B",
                  origin="ledger-count", seq=1, ts=2, warehouse="WH-BJ", delta=-1, document_id="count-1")  # fmt: skip
    pipeline.send_commands([loss])
    wait_for(
        lambda: any(p.event is ProgressEvent.RETURN_RECEIVED and p.order_id == returned
                    for p in pipeline.outputs().order_progress), 90, "the return received",
    )  # fmt: skip

    # -- a settlement file (对账): one order as the books have it, one with another amount, one never sold ------
    def yuan(fen: int) -> str:
        return f"{fen // 100}.{fen % 100:02d}"

    tmall = [o for o in day if o.channel is Channel.TMALL and o.order_id in shipped_orders and o.order_id != returned]
    matched, wrong = tmall[0], tmall[1]
    rows = ["#支付宝账务明细查询", "商户订单号,收入金额（+元）,服务费（元）,实收金额,入账时间"]
    for o, extra in ((matched, 0), (wrong, 100)):
        gross = sum(ln.paid_fen or 0 for ln in o.lines) + extra  # what the buyer paid, as sent
        fee = gross // 20
        rows.append(f"{o.platform_order_id},{yuan(gross)},{yuan(fee)},{yuan(gross - fee)},2025-11-21 10:00:00")
    rows.append("lg-never,10.00,0.50,9.50,2025-11-21 10:00:00")
    statement = tmp_path / "alipay.csv"
    statement.write_text("\n".join(rows) + "\n", encoding="utf-8")
    options = SettleOptions(file=statement, tenant="acme", channel="tmall", shop="tmall-1", wait_s=120)
    assert settle(pipeline.settings, options, out=io.StringIO(), err=io.StringIO()) == 0
    pipeline.wait_idle(timeout_s=180)

    # -- I5 (and everything else) from the result topics, against what was sent --------------------------------
    pipeline.inputs.fulfilment_complete = True
    verdict = assert_invariants(pipeline)
    out = pipeline.outputs()
    kinds = {k: sum(1 for v in {x.voucher_id: x for x in out.vouchers}.values() if v.kind is k) for k in VoucherKind}
    assert kinds[VoucherKind.REVENUE] == len({g.issue_id for g in out.goods_issued}) > 0
    assert kinds[VoucherKind.RETURN_COST] == 1 and kinds[VoucherKind.STOCK_LOSS] == 1
    assert kinds[VoucherKind.COMMISSION] == kinds[VoucherKind.PAYOUT] == 1
    results = {r.order_id: r.status for r in out.reconciliations}
    shipped_tmall = {o.order_id for o in day if o.channel is Channel.TMALL and o.order_id in shipped_orders}
    unsettled = shipped_tmall - {matched.order_id, wrong.order_id}  # open receivables the file does not mention
    assert results == {
        matched.order_id: ReconStatus.MATCHED,
        wrong.order_id: ReconStatus.AMOUNT_MISMATCH,
        order_id(Channel.TMALL, "tmall-1", "lg-never"): ReconStatus.MISSING_IN_BOOKS,
        **{o: ReconStatus.MISSING_IN_FILE for o in unsettled},
    }
    assert verdict.counts["inventory_value_fen"] > 0

    # -- the trial balance over HTTP: the partitions' tables, summed ---------------------------------------------
    def balance() -> dict | None:
        status, books = http("GET", pipeline.api("/api/v1/acme/trial-balance"), None, auth(credentials))
        return books if status == 200 and books["vouchers"] == verdict.counts["vouchers"] else None

    books = wait_for(balance, 60, "the trial balance over HTTP")
    assert books["balanced"] and books["debit_fen"] == sum(
        v.debit_fen for v in {x.voucher_id: x for x in out.vouchers}.values()
    )
    accounts = {row["account"]: row for row in books["accounts"]}
    assert accounts["1405"]["balance_fen"] == verdict.counts["inventory_value_fen"]

    # -- PostgreSQL: every voucher once, balanced, the same books ----------------------------------------------
    ids = {v.voucher_id for v in out.vouchers}

    def landed() -> dict | None:
        db = read_books(pipeline.settings.postgres_url, "acme", pipeline.settings.topic_prefix)
        return db if db["vouchers"] == len(ids) else None

    db = wait_for(landed, 120, "every voucher in PostgreSQL")
    assert db["rows"] == db["vouchers"] == len(ids), db  # no duplicate rows, though a worker died mid-stream
    assert db["unbalanced"] == [] and db["debit_fen"] == db["credit_fen"] == books["debit_fen"]
    assert db["accounts"]["1405"] == verdict.counts["inventory_value_fen"]
