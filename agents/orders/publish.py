"""Publishing review rules into the log: the only way a rule change reaches a decision.

One transaction writes each rule set to every partition of the order inbox (each partition's writer sees the
version at one point of its own log, so a replay decides the same) and to the compacted ``review-rules`` topic
(what the API shows). All or nothing: no partition can see a version another never will.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import msgspec

from engine.kafka.transactions import TxnProducer
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
    producer = TxnProducer(settings.bootstrap, f"{settings.app_id}.{publisher}", timeout_s=30.0)
    try:
        producer.init()
        producer.begin()
        for rules in rulesets:
            copy = wire.encode(RulesVersion(rules=rules))
            key = rules.tenant.encode()
            for partition in range(settings.partitions):
                producer.produce(topics.order_inbox, key, copy, partition=partition)
            producer.produce(topics.review_rules, key, wire.encode(rules))
        producer.commit()
    finally:
        producer.close()
    return len(rulesets)
