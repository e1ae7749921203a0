"""Publishing shipping policies into the log: the only way a policy change reaches the shipping stage.

One transaction writes each tenant's policy to every partition of the shipping inbox; each partition sees a
version at one point of its own log, so a replay packs and chooses carriers the same.
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.kafka import broadcast
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.shipping import CarrierRate, ItemSize, ShippingPolicy, ShippingPolicyVersion


def publish_policies(settings: Settings, policies: Mapping[str, ShippingPolicyVersion], publisher: str) -> int:
    """Blocking. ``policies``: tenant → version. ``publisher`` names the writer (its transactional id)."""
    if not policies:
        return 0
    inbox = Topics(settings.topic_prefix).shipping_inbox
    copies = [(inbox, tenant.encode(), wire.encode(version)) for tenant, version in sorted(policies.items())]
    broadcast.publish(settings, publisher, copies, [])
    return len(copies)


def demo_policy(skus: list[str]) -> ShippingPolicy:
    """The main job's policy: a cheaper carrier for light parcels nationwide, the faster one dearer per kilo; the
    generated SKUs weigh 200 g to 3 kg (deterministic by name)."""
    sizes = {
        sku: ItemSize(
            weight_g=200 + (sum(sku.encode()) * 37) % 2_800, volume_cm3=1_000 + (sum(sku.encode()) * 53) % 9_000
        )
        for sku in skus
    }
    return ShippingPolicy(
        rates=[
            CarrierRate(carrier="zto", first_fen=800, step_fen=400, max_g=30_000),
            CarrierRate(carrier="sf", first_fen=1_200, step_fen=200),
            CarrierRate(carrier="sf", region="北京市", first_fen=700, step_fen=200),
        ],
        sku_sizes=sizes,
        max_parcel_g=15_000,
    )
