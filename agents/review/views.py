"""Review API (on every worker; bearer token of the tenant):

* ``GET  /api/v1/{tenant}/holds`` — orders waiting for an operator, with the rules that held them;
* ``POST /api/v1/{tenant}/holds/{order_id}/release`` and ``…/reject`` — body ``{"actor": …, "note": …}``
  (optional); answered 202 once the command is on the review-commands topic, 404 if the order is not held;
* ``GET  /api/v1/{tenant}/rules`` and ``PUT /api/v1/{tenant}/rules`` — the tenant's rule set; a PUT is
  validated and published on the review-rules topic, which every worker follows.
"""

from __future__ import annotations

import time
from typing import Any

import faust
import orjson

from agents.review.registry import Registry
from engine import redisx
from engine.app import context
from engine.http import Edge, Problem, problem, reply
from schemas import wire
from schemas.review import ReviewCommand, ReviewCommandKind, RuleSet


def install(app: faust.App, edge: Edge, registry: Registry) -> None:
    topics = context(app).topics

    @app.page("/api/v1/{tenant}/holds")
    class Holds(faust.web.View):
        async def get(self, request: Any, tenant: str) -> faust.web.Response:
            try:
                edge.authenticate(request, tenant)
                raw = await redisx.safely("holds", edge.redis.hgetall(edge.keys.holds(tenant)), default=None)
                if raw is None:
                    raise Problem(503, "unavailable", "the holds list (Redis) cannot be read right now")
                holds = sorted(
                    (orjson.loads(v) for v in raw.values()), key=lambda h: (h.get("held_at", 0), h["order_id"])
                )
                return reply(self, 200, {"tenant": tenant, "count": len(holds), "holds": holds})
            except Problem as exc:
                return problem(self, exc)

    @app.page("/api/v1/{tenant}/holds/{order_id}/{action}")
    class HoldAction(faust.web.View):
        async def post(self, request: Any, tenant: str, order_id: str, action: str) -> faust.web.Response:
            try:
                caller = edge.authenticate(request, tenant)
                try:
                    kind = ReviewCommandKind(action)
                except ValueError:
                    raise Problem(404, "unknown_action", "use …/release or …/reject") from None
                body = await edge.body(request)
                try:
                    extra = orjson.loads(body) if body.strip() else {}
                except orjson.JSONDecodeError:
                    raise Problem(400, "malformed_json", "body is not JSON") from None
                if not isinstance(extra, dict):
                    raise Problem(400, "malformed_json", "body must be a JSON object")
                held = await redisx.safely("holds", edge.redis.hexists(edge.keys.holds(tenant), order_id), default=True)
                if not held:
                    raise Problem(404, "not_held", f"order {order_id!r} is not held")
                now = int(time.time() * 1000)
                fields = {
                    "command_id": f"{kind.value}.{tenant}.{order_id}.{now}",
                    "tenant": tenant,
                    "order_id": order_id,
                    "action": kind.value,
                    "actor": str(extra.get("actor") or caller)[:100].replace(":", "-"),
                    "note": str(extra.get("note") or "")[:2000],
                    "ts": now,
                }
                try:
                    cmd = wire.convert(fields, ReviewCommand)
                except wire.WireError as exc:
                    raise Problem(422, exc.reason.value, exc.detail) from None
                await (await edge.producer()).send(topics.review_commands, cmd.key, wire.encode(cmd))
                return reply(self, 202, {"order_id": order_id, "action": kind.value, "command_id": cmd.command_id})
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
                try:
                    rules = wire.decode(await edge.body(request), RuleSet)
                except wire.WireError as exc:
                    raise Problem(
                        422 if exc.reason.value == "schema_violation" else 400, exc.reason.value, exc.detail
                    ) from None
                if rules.tenant != tenant:
                    raise Problem(
                        422, "tenant_mismatch", f"the rule set is for {rules.tenant!r}, the path says {tenant!r}"
                    )
                current = registry.get(tenant)
                if current is not None and rules.version < current.version:
                    raise Problem(409, "stale_version", f"version {rules.version} is older than {current.version}")
                await (await edge.producer()).send(topics.review_rules, tenant, wire.encode(rules))
                return reply(self, 202, {"tenant": tenant, "version": rules.version, "rules": len(rules.rules)})
            except Problem as exc:
                return problem(self, exc)
