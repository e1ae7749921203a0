"""Evaluate one tenant's review rules against an order (pure).

Every rule is evaluated and every rule that fires is recorded. The outcome: ``reject`` if any
rejecting rule fired; otherwise ``approve`` if an allow-list rule (action ``approve``) fired; otherwise
``hold`` if any holding rule fired; otherwise ``approve``. So an allow-list beats a hold but never a reject.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.order import Order
from schemas.review import (
    Action,
    AddressIncomplete,
    AddressKeywords,
    AmountOver,
    Blacklist,
    FiredRule,
    MessageKeywords,
    PlatformRisk,
    Rule,
    RuleSet,
    UnitsOver,
    Velocity,
)


@dataclass(frozen=True)
class Facts:
    """What a rule may need beyond the order itself, from the stage's own state (never an outside lookup).

    ``buyer_orders`` maps a velocity window (seconds) to the number of orders from the same buyer in that
    window, by channel time, this one included.
    """

    buyer_orders: dict[int, int] = field(default_factory=dict)


@dataclass
class Evaluation:
    action: Action
    fired: list[FiredRule]
    skipped: list[str]

    @property
    def reasons(self) -> list[str]:
        return sorted({f.reason for f in self.fired if f.action is self.action})


def evaluate(order: Order, rules: RuleSet | None, facts: Facts) -> Evaluation:
    fired: list[FiredRule] = []
    skipped: list[str] = []
    for rule in rules.rules if rules else []:
        if rule.channels and order.channel not in rule.channels:
            continue
        detail = _check(rule, order, facts)
        if detail is _SKIPPED:
            skipped.append(rule.id)
        elif detail is not None:
            kind = type(rule).__struct_config__.tag
            fired.append(FiredRule(rule_id=rule.id, kind=kind, action=rule.action, reason=rule.reason, detail=detail))
    actions = {f.action for f in fired}
    if Action.REJECT in actions:
        action = Action.REJECT
    elif Action.APPROVE in actions:
        action = Action.APPROVE
    elif Action.HOLD in actions:
        action = Action.HOLD
    else:
        action = Action.APPROVE
    return Evaluation(action, fired, skipped)


_SKIPPED = "\0skipped"


def _check(rule: Rule, order: Order, facts: Facts) -> str | None:
    """The reason the rule fires (for the record), None if it does not, _SKIPPED if it cannot tell."""
    if isinstance(rule, AmountOver):
        total = order.goods_fen + order.shipping_fen
        return f"amount {total} > {rule.threshold_fen} fen" if total > rule.threshold_fen else None
    if isinstance(rule, UnitsOver):
        units = sum(line.quantity for line in order.lines)
        return f"{units} units > {rule.threshold}" if units > rule.threshold else None
    if isinstance(rule, Blacklist):
        value = _field(order, rule.field)
        return f"{rule.field} is blacklisted" if value and value in set(rule.values) else None
    if isinstance(rule, AddressIncomplete):
        r = order.receiver
        missing = [
            n
            for n, v in (("name", r.name), ("phone", r.phone), ("province", r.province), ("city", r.city))
            if not v.strip()
        ]
        if len(r.street.strip()) < rule.min_street_chars:
            missing.append("street")
        return f"missing {', '.join(missing)}" if missing else None
    if isinstance(rule, AddressKeywords):
        address = " ".join(
            (order.receiver.province, order.receiver.city, order.receiver.district, order.receiver.street)
        )
        hits = [w for w in rule.keywords if w in address]
        return f"address contains {hits[:3]}" if hits else None
    if isinstance(rule, MessageKeywords):
        texts = " ".join(getattr(order, f) for f in rule.fields)
        hits = [w for w in rule.keywords if w in texts]
        return f"message contains {hits[:3]}" if hits else None
    if isinstance(rule, Velocity):
        count = facts.buyer_orders.get(rule.window_s)
        if count is None:
            return _SKIPPED
        return f"{count} orders in {rule.window_s}s > {rule.max_orders}" if count > rule.max_orders else None
    if isinstance(rule, PlatformRisk):
        hits = sorted(set(order.risk_flags) & set(rule.flags))
        return f"platform flags {hits}" if hits else None
    raise TypeError(f"unknown rule {type(rule).__name__}")  # pragma: no cover - the union is closed


def _field(order: Order, path: str) -> str:
    obj: object = order
    for part in path.split("."):
        obj = getattr(obj, part, "")
    return str(obj or "")


def velocity_windows(rules: RuleSet | None) -> list[int]:
    return sorted({r.window_s for r in (rules.rules if rules else []) if isinstance(r, Velocity)})
