"""Review rules per tenant: loaded from ``OMS_RULES_FILE`` at start, then updated from the ``review-rules``
topic while running (every worker reads all of it). A rule set replaces another of the same tenant when
its ``version`` is at least as high, so re-publishing a version applies it again."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from schemas import wire
from schemas.review import RuleSet

log = logging.getLogger("oms.review.rules")


class RulesFile(msgspec.Struct, kw_only=True):
    rulesets: list[RuleSet] = msgspec.field(default_factory=list)


class RulesError(ValueError):
    pass


class Registry:
    def __init__(self, rulesets: list[RuleSet] | None = None) -> None:
        self._rules: dict[str, RuleSet] = {}
        for rs in rulesets or []:
            self.offer(rs)

    @classmethod
    def from_file(cls, path: str | Path | None) -> Registry:
        if not path or not Path(path).exists():
            return cls()
        try:
            data = msgspec.toml.decode(Path(path).read_bytes(), type=RulesFile)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RulesError(f"OMS_RULES_FILE={path}: {exc}") from None
        return cls(data.rulesets)

    def get(self, tenant: str) -> RuleSet | None:
        return self._rules.get(tenant)

    def offer(self, rules: RuleSet) -> bool:
        current = self._rules.get(rules.tenant)
        if current is not None and rules.version < current.version:
            return False
        self._rules[rules.tenant] = rules
        return True

    def on_record(self, key: bytes | None, value: bytes | None) -> None:
        """A record of the review-rules topic (bad ones are logged and skipped; the API validates first)."""
        if not value:
            return
        try:
            rules = wire.decode(value, RuleSet)
        except wire.WireError as exc:
            log.warning("ignoring an invalid rule set on the rules topic: %s", exc)
            return
        if self.offer(rules):
            log.info("rules for %s now at version %d (%d rules)", rules.tenant, rules.version, len(rules.rules))
