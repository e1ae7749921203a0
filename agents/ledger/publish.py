"""Publishing ledger policies into the log: the only way a tenant's chart, VAT rates or revenue recognition reach
the ledger stage. One transaction writes each tenant's policy to every partition of the ledger inbox, so each
partition sees a version at one point of its own log and a replay books the same vouchers."""

from __future__ import annotations

from collections.abc import Mapping

from engine.kafka import broadcast
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.ledger import LedgerPolicyVersion


def publish_policies(settings: Settings, policies: Mapping[str, LedgerPolicyVersion], publisher: str) -> int:
    """Blocking. ``policies``: tenant → version. ``publisher`` names the writer (its transactional id)."""
    if not policies:
        return 0
    inbox = Topics(settings.topic_prefix).ledger_inbox
    copies = [(inbox, tenant.encode(), wire.encode(version)) for tenant, version in sorted(policies.items())]
    broadcast.publish(settings, publisher, copies, [])
    return len(copies)
