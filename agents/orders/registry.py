"""The latest published rule set per tenant, for the API to show (followed from the compacted ``review-rules``
topic by every worker). Decisions never read it: each inbox partition holds its own copy of every version."""

from __future__ import annotations

import logging

from schemas import wire
from schemas.review import RuleSet

log = logging.getLogger("oms.orders.rules")


class Registry:
    def __init__(self) -> None:
        self._rules: dict[str, RuleSet] = {}

    def get(self, tenant: str) -> RuleSet | None:
        return self._rules.get(tenant)

    def offer(self, rules: RuleSet) -> bool:
        current = self._rules.get(rules.tenant)
        if current is not None and rules.version < current.version:
            return False
        self._rules[rules.tenant] = rules
        return True

    def on_record(self, key: bytes | None, value: bytes | None) -> None:
        """A record of the review-rules topic (the publisher validated it)."""
        if not value:
            return
        try:
            rules = wire.decode(value, RuleSet)
        except wire.WireError as exc:
            log.warning("ignoring an invalid rule set on the rules topic: %s", exc)
            return
        if self.offer(rules):
            log.info("rules for %s now at version %d (%d rules)", rules.tenant, rules.version, len(rules.rules))
