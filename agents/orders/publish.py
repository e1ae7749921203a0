"""Publishing review rules into the log: the only way a rule change reaches a decision.

One transaction writes each rule set to every partition of the order inbox (each partition's writer sees the
version at one point of its own log, so a replay decides the same) and to the compacted ``review-rules`` topic
(what the API shows). All or nothing: no partition can see a version another never will.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from engine.kafka import broadcast
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.inbox import RulesVersion
from schemas.review import RuleSet


class RulesFile(msgspec.Struct, kw_only=True):
    rulesets: list[RuleSet] = msgspec.field(default_factory=list)


class RulesError(ValueError):
    pass


def load_rules_file(path: str | Path | None) -> list[RuleSet]:
    if not path or not Path(path).exists():
        return []
    try:
        return msgspec.toml.decode(Path(path).read_bytes(), type=RulesFile).rulesets
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise RulesError(f"OMS_RULES_FILE={path}: {exc}") from None


def publish_rules(settings: Settings, rulesets: Iterable[RuleSet], publisher: str) -> int:
    """Blocking. ``publisher`` names the writer (its transactional id), e.g. ``rules-api-0``."""
    rulesets = list(rulesets)
    if not rulesets:
        return 0
    topics = Topics(settings.topic_prefix)
    copies = [(topics.order_inbox, r.tenant.encode(), wire.encode(RulesVersion(rules=r))) for r in rulesets]
    latest = [(topics.review_rules, r.tenant.encode(), wire.encode(r)) for r in rulesets]
    broadcast.publish(settings, publisher, copies, latest)
    return len(rulesets)
