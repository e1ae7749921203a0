"""Operators' API (on every worker; bearer token of the tenant):

* ``GET  /api/v1/{tenant}/holds`` — orders waiting for an operator, with the rules that held them;
* ``POST /api/v1/{tenant}/holds/{order_id}/release`` and ``…/reject`` — body ``{"actor": …, "note": …}``
  (optional); 202 once the action is in the order's inbox, 404 if the order is not held, 503 while the holds
  list cannot be read (Redis down: retry);
* ``GET  /api/v1/{tenant}/rules`` and ``PUT /api/v1/{tenant}/rules`` — the tenant's rule set; a PUT is validated
  and published into the log (agents.orders.publish), which is where every partition's writer reads it. At most
  ``MAX_RULES`` (500) rules.

Bodies are read with ``Edge.body``: more than ``OMS_MAX_PAYLOAD_BYTES`` (or more rules than the limit) is a 413
``oversize`` naming the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import faust
import orjson

from agents.orders.publish import publish_rules
from agents.orders.registry import Registry
from engine.app import context
from engine.http.edge import Edge, Problem, at_most, json_object, problem, reply
from engine.readmodels.holds import HoldsModel, Unavailable
from schemas import wire
from schemas.inbox import OperatorAction
from schemas.review import OperatorActionKind, RuleSet

#: Most rules one rule set may have: the record's own limit (``RuleSet.rules``), told as a 413.
MAX_RULES = 500


def parse_rules(body: bytes) -> RuleSet:
    """A PUT body as a rule set, or a Problem: 400 not JSON, 413 more than ``MAX_RULES`` rules, 422 not a rule
    set."""
    with contextlib.suppress(orjson.JSONDecodeError):
        fields = orjson.loads(body)
        if isinstance(fields, dict) and isinstance(fields.get("rules"), list):
            at_most(fields["rules"], MAX_RULES, "rules in one rule set")
    try:
        return wire.decode(body, RuleSet)
    except wire.WireError as exc:
        status = 422 if exc.reason.value == "schema_violation" else 400
        raise Problem(status, exc.reason.value, exc.detail) from None


def install(app: faust.App, edge: Edge, holds: HoldsModel, registry: Registry) -> None:
    ctx = context(app)
    topics = ctx.topics
    publishing = asyncio.Lock()

    @app.page("/api/v1/{tenant}/holds")
    class Holds(faust.web.View):
        async def get(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                try:
                    listed = await holds.list(tenant)
                except Unavailable:
                    raise Problem(503, "unavailable", "the holds list (Redis) cannot be read right now") from None
                return reply(self, 200, {"tenant": tenant, "count": len(listed), "holds": listed})
            except Problem as exc:
                return problem(self, exc)

    @app.page("/api/v1/{tenant}/holds/{order_id}/{action}")
    class HoldAction(faust.web.View):
        async def post(self, request: Any, tenant: str, order_id: str, action: str) -> faust.web.Response:
            try:
                caller = edge.authenticate(request, tenant)
                if action not in (OperatorActionKind.RELEASE.value, OperatorActionKind.REJECT.value):
                    raise Problem(404, "unknown_action", "use …/release or …/reject")
                kind = OperatorActionKind(action)
                extra = json_object(await edge.body(request), empty_ok=True)
                try:
                    held = await holds.find(tenant, order_id)
                except Unavailable:
                    raise Problem(503, "unavailable", "the holds list (Redis) cannot be read right now") from None
                if held is None:
                    raise Problem(404, "not_held", f"order {order_id!r} is not held")
                now = int(time.time() * 1000)
                fields = {
                    "action_id": f"{kind.value}.{tenant}.{order_id}.{now}",
                    "tenant": tenant,
                    "order_id": order_id,
                    "inbox_key": held["inbox_key"],
                    "action": kind.value,
                    "actor": _ident(str(extra.get("actor") or caller)),
                    "note": str(extra.get("note") or "")[:2000],
                    "ts": now,
                }
                try:
                    cmd = wire.convert(fields, OperatorAction)
                except wire.WireError as exc:
                    raise Problem(422, exc.reason.value, exc.detail) from None
                await (await edge.producer()).send(topics.order_inbox, cmd.key, wire.encode(cmd))
                return reply(self, 202, {"order_id": order_id, "action": kind.value, "action_id": cmd.action_id})
            except Problem as exc:
                return problem(self, exc)

    @app.page("/api/v1/{tenant}/rules")
    class Rules(faust.web.View):
        async def get(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                rules = registry.get(tenant)
                if rules is None:
                    raise Problem(404, "no_rules", f"tenant {tenant!r} has no review rules (every order is approved)")
                return reply(self, 200, wire.to_builtins(rules))
            except Problem as exc:
                return problem(self, exc)

        async def put(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                rules = parse_rules(await edge.body(request))
                if rules.tenant != tenant:
                    raise Problem(
                        422, "tenant_mismatch", f"the rule set is for {rules.tenant!r}, the path says {tenant!r}"
                    )
                current = registry.get(tenant)
                if current is not None and rules.version <= current.version:
                    raise Problem(409, "stale_version", f"version {rules.version} is not newer than {current.version}")
                async with publishing:  # one transactional id per worker: one publication at a time
                    await asyncio.to_thread(publish_rules, ctx.settings, [rules], f"rules-api-{ctx.worker_index}")
                return reply(self, 202, {"tenant": tenant, "version": rules.version, "rules": len(rules.rules)})
            except Problem as exc:
                return problem(self, exc)


def _ident(text: str) -> str:
    """An operator name as an identifier (letters, digits, ``._#/-``)."""
    cleaned = "".join(c if c.isalnum() or c in "._#/-" else "-" for c in text[:100]).replace("..", "-")
    return cleaned if cleaned and cleaned[0].isalnum() else f"op-{cleaned}"[:100]
