"""Finance API (on every worker; bearer token of the tenant):

* ``GET /api/v1/{tenant}/trial-balance`` — the tenant's trial balance (试算平衡表) per account: Σ debit, Σ credit
  and the balance in fen, and whether it balances. It is a read model (Redis) of the ledger partitions' tables,
  written after each committed transaction: it may trail the vouchers topic by a moment, never disagree with it.
"""

from __future__ import annotations

from typing import Any

import faust

from agents.ledger.agent import trial_balance
from engine.http.edge import Edge, Problem, problem, reply
from engine.readmodels.redis import ERRORS


def install(app: faust.App, edge: Edge) -> None:
    @app.page("/api/v1/{tenant}/trial-balance")
    class TrialBalanceView(faust.web.View):
        async def get(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                try:
                    books = await trial_balance(edge.redis, edge.keys, tenant)
                except ERRORS as exc:
                    raise Problem(503, "unavailable", f"the trial balance cannot be read now: {exc}") from None
                return reply(self, 200, books)
            except Problem as exc:
                return problem(self, exc)
