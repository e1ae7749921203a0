"""Send a channel day into the engine the way channels do: raw topics, the HTTP API, signed webhooks; and act on
held orders the way an operator does."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson

from engine.kafka.clients import Sender
from engine.settings import Settings
from engine.tenants import PullShop, ShopifyShop, TenantConfig, token_digest, write
from engine.topics import Topics
from workload.channels import SHOPIFY_DOMAIN, Delivery
from workload.stock import SENT_HEADER

HTTP_BATCH = 50


@dataclass
class Credentials:
    tokens: dict[str, str]  # tenant -> API token
    shopify: dict[tuple[str, str], tuple[str, str]]  # (tenant, shop_id) -> (domain, webhook secret)
    path: Path

    @classmethod
    def create(
        cls,
        tenants: Iterable[str],
        directory: Path,
        shops: Iterable[str] = ("s1", "s2"),
        pull: Iterable[tuple[str, PullShop]] = (),
    ) -> Credentials:
        """Fresh tokens and webhook secrets for a run, written as an OMS_TENANTS_FILE (with the shops whose orders
        are pulled, if any)."""
        directory.mkdir(parents=True, exist_ok=True)
        tenants, shops, pulled = list(tenants), list(shops), list(pull)
        tokens = {t: secrets.token_urlsafe(24) for t in tenants}
        shopify = {
            (t, s): (SHOPIFY_DOMAIN.format(tenant=t, shop=s), secrets.token_hex(16)) for t in tenants for s in shops
        }
        config = {
            t: TenantConfig(
                tokens_sha256=[token_digest(tokens[t])],
                shopify=[ShopifyShop(domain=shopify[(t, s)][0], shop_id=s, secret=shopify[(t, s)][1]) for s in shops],
                pull=[p for owner, p in pulled if owner == t],
            )
            for t in tenants
        }
        path = directory / "tenants.toml"
        write(path, config)
        path.chmod(0o600)
        return cls(tokens, shopify, path)


@dataclass
class DeliveryStats:
    by_route: Counter = field(default_factory=Counter)
    http_status: Counter = field(default_factory=Counter)
    http_refused: Counter = field(default_factory=Counter)  # reason code -> orders refused at the edge
    duplicates_at_edge: int = 0
    #: indexes (in the day's list) of deliveries the engine took in: sent to a raw topic, or 202 from the API
    taken: set[int] = field(default_factory=set)


def _is_json(body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return True


def sign(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


async def deliver(
    settings: Settings, topics: Topics, deliveries: list[Delivery], creds: Credentials, workers: int
) -> DeliveryStats:
    """Raw-topic deliveries go through one idempotent producer; HTTP ones spread over the workers' APIs."""
    stats = DeliveryStats()
    sender = Sender(settings.bootstrap)
    http: list[tuple[int, Delivery]] = []
    for i, d in enumerate(deliveries):
        stats.by_route[d.via] += 1
        if d.via == "kafka":
            sender.send(topics.raw[d.channel], d.raw_key, d.body, headers={SENT_HEADER: _ms()})
            stats.taken.add(i)
        else:
            http.append((i, d))
    sender.flush()
    ports = itertools.cycle([settings.web_port + i for i in range(workers)])
    gate = asyncio.Semaphore(8)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        jobs = []
        # web / POS: the retailer's systems batch; keep each order's deliveries in order within one batch stream
        runs: dict[tuple[str, str, str], list[tuple[int, Delivery]]] = defaultdict(list)
        for i, d in http:
            if d.via == "http" and _is_json(d.body):
                runs[(d.tenant, d.channel.value, d.shop)].append((i, d))
            elif d.via == "http":  # bytes that are not JSON cannot sit in a JSON array: a request of their own
                url = f"http://127.0.0.1:{next(ports)}/api/v1/{d.tenant}/{d.channel.value}/{d.shop}/orders"
                headers = {"Authorization": f"Bearer {creds.tokens[d.tenant]}", "Content-Type": "application/json"}
                jobs.append(_post(session, gate, url, d.body, headers, stats, [i]))
        for (tenant, channel, shop), items in runs.items():
            for start in range(0, len(items), HTTP_BATCH):
                chunk = items[start : start + HTTP_BATCH]
                body = b"[" + b",".join(d.body for _, d in chunk) + b"]"
                url = f"http://127.0.0.1:{next(ports)}/api/v1/{tenant}/{channel}/{shop}/orders"
                headers = {"Authorization": f"Bearer {creds.tokens[tenant]}", "Content-Type": "application/json"}
                jobs.append(_post(session, gate, url, body, headers, stats, [i for i, _ in chunk], batch=True))
            await asyncio.gather(*jobs)  # per run, so an order's later update is not sent before it
            jobs = []
        await asyncio.gather(*jobs)
        # Webhooks of one order in order (an update follows its order), different orders concurrently: one at a
        # time, a day's webhooks wait on busy workers' event loops one after the other and the send dominates.
        by_order: dict[str, list[tuple[int, Delivery]]] = defaultdict(list)
        for i, d in http:
            if d.via == "webhook":
                by_order[d.raw_key].append((i, d))

        async def send_in_order(items: list[tuple[int, Delivery]]) -> None:
            for i, d in items:
                domain, secret = creds.shopify[(d.tenant, d.shop)]
                headers = {
                    "Content-Type": "application/json",
                    "X-Shopify-Shop-Domain": domain,
                    "X-Shopify-Hmac-SHA256": sign(secret, d.body),
                    "X-Shopify-Webhook-Id": hashlib.sha1(d.body).hexdigest(),
                    "X-Shopify-Topic": "orders/updated",
                }
                url = f"http://127.0.0.1:{next(ports)}/webhooks/shopify/orders"
                await _post(session, gate, url, d.body, headers, stats, [i])

        await asyncio.gather(*(send_in_order(items) for items in by_order.values()))
    return stats


def _ms() -> bytes:
    return str(int(time.time() * 1000)).encode()


async def _post(
    session: aiohttp.ClientSession,
    gate: asyncio.Semaphore,
    url: str,
    body: bytes,
    headers: dict,
    stats: DeliveryStats,
    indexes: list[int],
    batch: bool = False,
) -> None:
    async with gate:
        for attempt in range(8):
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    payload = orjson.loads(await resp.read() or b"{}")
                    if resp.status == 503 and attempt < 7:
                        await asyncio.sleep(0.5 * (attempt + 1))
                        continue
                    stats.http_status[resp.status] += 1
                    items = payload.get("results", [payload]) if batch else [payload]
                    for position, item in enumerate(items):
                        index = indexes[item.get("index", position)] if batch else indexes[0]
                        if item.get("status") == "rejected" or item.get("error"):
                            stats.http_refused[item.get("error", "unknown")] += 1
                        else:
                            stats.taken.add(index)
                            if item.get("status") == "duplicate":
                                stats.duplicates_at_edge += 1
                    return
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5 * (attempt + 1))
        stats.http_status["failed"] += 1


async def resolve_holds(
    settings: Settings, creds: Credentials, workers: int, expected: int, timeout_s: float = 180.0
) -> tuple[Counter, list[tuple[str, str]]]:
    """An operator's pass over the held orders: release every other one, reject the rest (through the API).

    Waits until the holds list shows ``expected`` holds (it is a read model: after a Redis restart it is written
    again from the engine's state) or ``timeout_s`` passes. Returns the answers by action and status, and the
    (order key, action) pairs that were accepted."""
    done: Counter = Counter()
    actions: list[tuple[str, str]] = []
    ports = itertools.cycle([settings.web_port + i for i in range(workers)])
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        holds: dict[str, list[dict]] = {}
        while True:
            for tenant, token in creds.tokens.items():
                try:
                    url = f"http://127.0.0.1:{next(ports)}/api/v1/{tenant}/holds"
                    async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                        if resp.status == 200:
                            holds[tenant] = orjson.loads(await resp.read()).get("holds", [])
                        else:
                            done[f"list:{resp.status}"] += 1
                except (aiohttp.ClientError, TimeoutError):
                    done["list:failed"] += 1
            if sum(len(h) for h in holds.values()) >= expected or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        for tenant, listed in holds.items():
            headers = {"Authorization": f"Bearer {creds.tokens[tenant]}"}
            for i, hold in enumerate(listed):
                action = "release" if i % 2 == 0 else "reject"
                url = f"http://127.0.0.1:{next(ports)}/api/v1/{tenant}/holds/{hold['order_id']}/{action}"
                note = orjson.dumps({"actor": "oms-run", "note": "end-of-day review"})
                for attempt in range(20):
                    async with session.post(url, data=note, headers=headers) as resp:
                        if resp.status == 503 and attempt < 19:  # Redis away: the list comes back, so retry
                            await asyncio.sleep(1.0)
                            continue
                        done[f"{action}:{resp.status}"] += 1
                        if resp.status == 202:
                            actions.append((f"{tenant}:{hold['order_id']}", action))
                        break
    return done, actions
