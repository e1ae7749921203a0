"""Tenants and their credentials (``OMS_TENANTS_FILE``, TOML).

API tokens are stored as SHA-256 hex digests, never in clear. A Shopify shop is known by its
``*.myshopify.com`` domain; its webhook secret is read from the environment variable named by
``secret_env`` (or, for development, given inline as ``secret``).

    [tenants.acme]
    tokens_sha256 = ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"]
    check_catalog = true            # reject lines whose SKU the tenant's catalog does not have

    [[tenants.acme.shopify]]
    domain = "acme-store.myshopify.com"
    shop_id = "acme-store"
    secret_env = "ACME_SHOPIFY_SECRET"

    [[tenants.acme.pull]]            # order pulling (定时抓取) from the platform's order list, besides its pushes
    channel = "tmall"
    shop_id = "tm-1"
    every_s = 5.0
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec

from schemas.common import Ident, Tenant


class ShopifyShop(msgspec.Struct, kw_only=True, frozen=True):
    domain: str
    shop_id: Ident
    secret: str = ""
    secret_env: str = ""

    def webhook_secret(self) -> str:
        return os.environ.get(self.secret_env, "") if self.secret_env else self.secret


class PullShop(msgspec.Struct, kw_only=True, frozen=True):
    """A shop whose orders are also pulled from its platform's order list (定时抓取), every ``every_s``."""

    channel: str
    shop_id: Ident
    every_s: float = 5.0


class TenantConfig(msgspec.Struct, kw_only=True, frozen=True):
    tokens_sha256: list[str] = msgspec.field(default_factory=list)
    shopify: list[ShopifyShop] = msgspec.field(default_factory=list)
    check_catalog: bool = True
    pull: list[PullShop] = msgspec.field(default_factory=list)


class TenantsFile(msgspec.Struct, kw_only=True, frozen=True):
    tenants: dict[Tenant, TenantConfig] = msgspec.field(default_factory=dict)


class TenantsError(ValueError):
    pass


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Tenants:
    config: dict[str, TenantConfig]

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> Tenants | None:
        if not path:
            return None
        try:
            data = msgspec.toml.decode(Path(path).read_bytes(), type=TenantsFile)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise TenantsError(f"OMS_TENANTS_FILE={path}: {exc}") from None
        return cls(dict(data.tenants))

    def known(self, tenant: str) -> bool:
        return tenant in self.config

    def tenant_of_token(self, token: str) -> str | None:
        """The tenant this bearer token belongs to (constant-time comparison of digests)."""
        digest = token_digest(token)
        found = None
        for tenant, cfg in self.config.items():
            for known in cfg.tokens_sha256:
                if hmac.compare_digest(known.lower(), digest):
                    found = tenant
        return found

    def shopify_shop(self, domain: str) -> tuple[str, ShopifyShop] | None:
        for tenant, cfg in self.config.items():
            for shop in cfg.shopify:
                if shop.domain.lower() == domain.lower():
                    return tenant, shop
        return None

    def pulled_shops(self) -> list[tuple[str, PullShop]]:
        """Every (tenant, shop) whose orders are pulled, in a stable order."""
        return sorted(((t, p) for t, cfg in self.config.items() for p in cfg.pull), key=lambda x: (x[0], x[1].shop_id))

    def checks_catalog(self, tenant: str) -> bool:
        cfg = self.config.get(tenant)
        return bool(cfg and cfg.check_catalog)


def write(path: Path, tenants: dict[str, TenantConfig]) -> None:
    """Write a tenants file (the main job and the tests make their own, with fresh tokens)."""
    path.write_bytes(msgspec.toml.encode(TenantsFile(tenants=tenants)))
