"""Generated channel payloads round-trip through the adapters; tenants and rule files load; no servers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agents.ingest.adapters import AdapterError, Source, adapt
from agents.ingest.adapters.base import parse_json
from agents.orders.publish import RulesError, load_rules_file
from agents.orders.registry import Registry
from engine.settings import REPO_ROOT
from engine.tenants import Tenants, TenantsError
from schemas import wire
from schemas.order import OrderStatus
from schemas.review import RuleSet
from workload.channels import DayMix, channel_day
from workload.delivery import Credentials
from workload.generator import Workload, WorkloadSpec

ROOT = Path(__file__).resolve().parents[2]


def test_every_channel_round_trips_through_its_adapter() -> None:
    workload = Workload(WorkloadSpec(orders=800, seed=6))
    reference = {o.key: o for o in workload.orders()}
    seen: Counter = Counter()
    for d in channel_day(workload.orders(), 6, DayMix(bad=0.0)):
        order = adapt(Source(d.tenant, d.channel, d.shop, 1), parse_json(d.body))
        ref = reference[order.key]
        # the generator's intent (what the invariant checker trusts) says what the adapter read
        assert d.intent is not None and d.intent.key == order.key
        assert d.intent.status is order.status or {d.intent.status, order.status} <= {
            OrderStatus.PAID,
            OrderStatus.HOLD_BY_PLATFORM,
        }
        if d.intent.status is not OrderStatus.CANCELLED:  # a cancelled order's lines may read either way
            assert [ln.status for ln in d.intent.lines] == [ln.status for ln in order.lines]
        assert [(ln.sku, ln.quantity, ln.unit_price_fen) for ln in order.lines] == [
            (ln.sku, ln.quantity, ln.unit_price_fen) for ln in ref.lines
        ]
        assert (order.created_at, order.shipping_fen, order.receiver.city) == (
            ref.created_at,
            ref.shipping_fen,
            ref.receiver.city,
        )
        seen[d.channel] += 1
    assert len(seen) == 7, f"every channel is in the day: {seen}"


def test_bad_deliveries_are_classified_not_crashing() -> None:
    workload = Workload(WorkloadSpec(orders=400, seed=2))
    bad = [d for d in channel_day(workload.orders(), 2, DayMix(bad=0.2)) if d.kind == "bad"]
    assert len(bad) > 40
    outcomes = Counter()
    for d in bad:
        try:
            adapt(Source(d.tenant, d.channel, d.shop, 1), parse_json(d.body))
            outcomes["adapted"] += 1  # an unknown SKU is only caught by the catalog
        except AdapterError as exc:
            outcomes[exc.reason.value] += 1
    assert outcomes["malformed_json"] and outcomes["schema_violation"] and outcomes["invalid_record"]


def test_tenants_file_tokens_and_shops(tmp_path: Path) -> None:
    creds = Credentials.create(["acme", "blue"], tmp_path)
    tenants = Tenants.load(creds.path)
    assert tenants.tenant_of_token(creds.tokens["acme"]) == "acme"
    assert tenants.tenant_of_token(creds.tokens["blue"]) == "blue"
    assert tenants.tenant_of_token("guess") is None
    domain, secret = creds.shopify[("acme", "s2")]
    tenant, shop = tenants.shopify_shop(domain)
    assert (tenant, shop.shop_id, shop.webhook_secret()) == ("acme", "s2", secret)
    assert creds.tokens["acme"] not in creds.path.read_text()  # only digests are stored
    assert Tenants.load(REPO_ROOT / "deploy" / "tenants.example.toml").known("acme")
    (tmp_path / "broken.toml").write_text("[tenants.acme]\ntokens_sha256 = 5\n")
    with pytest.raises(TenantsError, match="tokens_sha256"):
        Tenants.load(tmp_path / "broken.toml")


def test_rules_file_and_versions(tmp_path: Path) -> None:
    registry = Registry()
    for rules in load_rules_file(ROOT / "deploy" / "rules.toml"):
        registry.offer(rules)
    acme = registry.get("acme")
    assert acme is not None and {type(r).__struct_config__.tag for r in acme.rules} >= {
        "amount_over",
        "velocity",
        "blacklist",
    }
    older = RuleSet(tenant="acme", version=0, rules=[])
    assert not registry.offer(older) and registry.get("acme") is acme
    newer = RuleSet(tenant="acme", version=acme.version + 1, rules=[])
    registry.on_record(b"acme", wire.encode(newer))
    assert registry.get("acme").version == acme.version + 1
    registry.on_record(b"acme", b"not json")  # ignored, logged
    (tmp_path / "bad.toml").write_text('[[rulesets]]\ntenant = "acme"\n[[rulesets.rules]]\nkind = "nope"\n')
    with pytest.raises(RulesError):
        load_rules_file(tmp_path / "bad.toml")


def test_repeat_homes_give_each_buyer_one_address_and_change_nothing_else() -> None:
    from workload.generator import Workload, WorkloadSpec

    plain = list(Workload(WorkloadSpec(orders=600, seed=5)).orders())
    homes = list(Workload(WorkloadSpec(orders=600, seed=5, repeat_homes=True)).orders())
    assert [(o.order_id, o.lines, o.buyer) for o in plain] == [(o.order_id, o.lines, o.buyer) for o in homes]
    addresses: dict[tuple[str, str], set] = {}
    for o in homes:
        addresses.setdefault((o.tenant, o.buyer.id), set()).add(o.receiver)
    assert max(len(a) for a in addresses.values()) == 1
    assert any(len({o.receiver for o in plain if (o.tenant, o.buyer.id) == k}) > 1 for k in addresses)
