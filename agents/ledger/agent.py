"""The ledger stage (总账): one writer per order's books (key ``tenant:order_id``; stock moves without an order
by ``tenant:sku``, freight by ``tenant:shipment_id``).

Reads the ledger inbox, books each business event with agents.ledger.core under the tenant's ledger policy (a
versioned record in the log, one copy per partition; the standard chart, 13 % VAT and revenue at shipment until
one is published), and publishes the vouchers (``vouchers``) and reconciliation results (``reconciliations``).
Each partition keeps its share of every tenant's trial balance (试算平衡表) in a table; after each committed
transaction it is written to Redis, where ``GET /api/v1/{tenant}/trial-balance`` sums the partitions. A share is
written only if newer (engine.readmodels.versioned): its version is the offset of the ledger-inbox record that
last changed it, or, in a rebuild from the table, the partition's stored position minus one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust

from agents.ledger.core import OrderBook, book
from engine.app import context
from engine.readmodels.redis import ERRORS, Keys
from engine.readmodels.sync import ReadModelSync
from engine.readmodels.versioned import VersionedHash
from engine.runtime.kit import Broadcast, KeyedLogic, Step
from engine.runtime.stage import Stage
from engine.runtime.work import Input, PartitionWork
from engine.topics import Topics
from schemas import wire
from schemas.ledger import (
    AccountBalance,
    LedgerPolicy,
    LedgerPolicyVersion,
    LedgerRecord,
    ParcelsShipped,
    Reconciliation,
    StockMoved,
    TrialBalance,
    Voucher,
)

log = logging.getLogger("oms.ledger")

BOOKS, POLICIES, BALANCES = "ledger-books", "ledger-policies", "ledger-balances"
DEFAULT_POLICY = LedgerPolicy()


def policy_key(tenant: str, partition: int) -> str:
    return f"{tenant}#p{partition}"


POLICY = Broadcast(LedgerPolicyVersion, POLICIES, LedgerPolicyVersion, policy_key, "policy")


def post(balance: TrialBalance, voucher: Voucher) -> None:
    """Add a voucher's lines to a trial balance (in place)."""
    for line in voucher.lines:
        current = balance.accounts.get(line.account)
        debit, credit = (current.debit_fen, current.credit_fen) if current else (0, 0)
        balance.accounts[line.account] = AccountBalance(debit + line.debit_fen, credit + line.credit_fen)
        balance.names.setdefault(line.account, line.name)
    balance.vouchers += 1


class LedgerLogic(KeyedLogic[OrderBook]):
    """Record time; an order's books are kept a retention after their last event. Each voucher is also posted to
    the partition's share of its tenant's trial balance (``ledger-balances``, key as the policy's)."""

    name = "ledger"
    tables = (BOOKS, POLICIES, BALANCES)
    record_type = LedgerRecord
    broadcasts = (POLICY,)
    state_table, state_type = BOOKS, OrderBook

    def __init__(self, topics: Topics, partitions: int, retention_ms: int = 120 * 86_400_000) -> None:
        self.inputs = (topics.ledger_inbox,)
        self.retention_ms = retention_ms  # an order's books are kept this long after their last event
        self.topics = topics
        self.partitions = partitions
        self.routes = {Voucher: (topics.vouchers,), Reconciliation: (topics.reconciliations,)}
        self.keys: Keys | None = None
        self.redis: Any = None
        self.sync: ReadModelSync | None = None
        self.stage: Stage | None = None
        self._pending: set[asyncio.Future] = set()
        self._hashes: VersionedHash | None = None

    def handle(self, work: PartitionWork, record: Input, item: LedgerRecord) -> Step[OrderBook]:
        found = self.config(work, POLICY, item.tenant, record.partition)
        policy, version = (found.policy, found.version) if found is not None else (DEFAULT_POLICY, 0)
        stateless = isinstance(item, ParcelsShipped) or (isinstance(item, StockMoved) and item.event.order_id is None)
        state = None if stateless else work.get_as(BOOKS, item.key, OrderBook)
        step = book(state, item, policy, version)
        return Step(step.state, step.changed, [*step.vouchers, *step.results], step.note, step.refused)

    def touch(self, state: OrderBook, now: int) -> None:
        state.last_ts = max(state.last_ts, now)

    def keep_until(self, state: OrderBook) -> int | None:
        return state.last_ts + self.retention_ms

    def save(self, work: PartitionWork, item: LedgerRecord, step: Step[OrderBook], now: int) -> None:
        """The books, then every voucher posted to the partition's share of the tenant's trial balance."""
        super().save(work, item, step, now)
        vouchers = [out for out in step.outputs if type(out) is Voucher]
        if not vouchers:
            return
        tenant = item.tenant
        balance_key = policy_key(tenant, work.partition)
        balance = work.get_as(BALANCES, balance_key, TrialBalance) or TrialBalance(tenant=tenant)
        for voucher in vouchers:
            post(balance, voucher)
        encoded = wire.encode(balance)
        work.put(BALANCES, balance_key, encoded)
        assert work.record is not None
        work.side_effects.append((tenant, encoded, work.record.offset))  # versioned by the record that made it
        work.note("vouchers", len(vouchers))

    # -- the trial balance read model (Redis: one hash per tenant, a field per partition) ---------------------
    def on_assigned(self, partitions: set[int]) -> None:
        if self.sync is not None:
            self.sync.mark_dirty("trial-balance", partitions)

    def after_commit(self, partition: int, side_effects: list[Any]) -> None:
        if self.redis is None or not side_effects:
            return
        # tenant -> its balance after the transaction's last voucher, versioned by that record's offset
        latest = {tenant: (offset, encoded) for tenant, encoded, offset in side_effects}
        future = asyncio.ensure_future(self._write(partition, latest))
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    async def _write(self, partition: int, balances: dict[str, tuple[int, bytes]]) -> bool:
        """Each tenant's share of ``partition`` (tenant -> (version, balance)), where newer than Redis's."""
        assert self.keys is not None
        if self._hashes is None:
            self._hashes = VersionedHash(self.redis)
        field = f"p{partition}"
        writes = {self.keys.trial_balance(t): [(field, version, encoded)] for t, (version, encoded) in balances.items()}
        try:
            await self._hashes.apply_many(writes)
            return True
        except ERRORS as exc:
            log.warning("trial balance not written to Redis (%s); rebuilt when it answers again", exc)
            if self.sync is not None:
                self.sync.mark_dirty("trial-balance", {partition})
            return False

    async def rebuild(self, partition: int) -> bool:
        """Write this partition's share of every tenant's trial balance again from the table, at the stored
        position minus one (read before the table, which therefore covers at least that much)."""
        if self.stage is None or self.redis is None:
            return True
        version = self.stage.stored_next_offset(self.inputs[0], partition) - 1
        balances = {}
        for _key, value in self.stage.store(BALANCES).items(partition):
            balance = wire.decode_state(value, TrialBalance)
            balances[balance.tenant] = (version, value)
        return await self._write(partition, balances) if balances else True


async def trial_balance(redis: Any, keys: Keys, tenant: str) -> dict[str, Any]:
    """A tenant's trial balance: the partitions' shares summed, per account; ``balanced`` when Σ debit = Σ credit."""
    raw = await redis.hgetall(keys.trial_balance(tenant))
    accounts: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    vouchers = 0
    for value in raw.values():
        share = wire.decode_state(value, TrialBalance)
        vouchers += share.vouchers
        names.update(share.names)
        for code, amounts in share.accounts.items():
            total = accounts.setdefault(code, [0, 0])
            total[0] += amounts.debit_fen
            total[1] += amounts.credit_fen
    rows = [
        {"account": code, "name": names.get(code, ""), "debit_fen": d, "credit_fen": c, "balance_fen": d - c}
        for code, (d, c) in sorted(accounts.items())
    ]
    debit, credit = sum(r["debit_fen"] for r in rows), sum(r["credit_fen"] for r in rows)
    return {
        "tenant": tenant,
        "partitions": len(raw),
        "vouchers": vouchers,
        "accounts": rows,
        "debit_fen": debit,
        "credit_fen": credit,
        "balanced": debit == credit,
    }


def install(app: faust.App, redis: Any = None, keys: Keys | None = None, sync: ReadModelSync | None = None) -> Stage:
    ctx = context(app)
    logic = LedgerLogic(ctx.topics, ctx.settings.partitions, ctx.settings.ledger_retention_s * 1000)
    logic.redis, logic.keys, logic.sync = redis, keys, sync
    stage = logic.stage = Stage(app, logic)
    if sync is not None:
        sync.register("trial-balance", stage.owned, logic.rebuild)
    return stage
