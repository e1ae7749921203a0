"""Order pulling (定时抓取): catch up what a platform's push missed, from its order list, by modified time.

Pushes can be lost (a webhook that never arrives, a TMC message dropped); order systems therefore also pull. For
every shop the tenants file lists under ``pull``, a poller asks the platform's order-list API for the orders it
modified in a *window* — from the shop's checkpoint minus an overlap (``OMS_PULL_OVERLAP_S``: late writes on the
platform's side) to now minus a lag (``OMS_PULL_LAG_S``) — page by page, at most ``OMS_PULL_CALLS_PER_S`` calls
per second, and writes each order as it came to the channel's raw topic, exactly where a push lands: ingest
adapts it, the order stage takes it once (a pushed copy, or the overlap's, has the same channel version).

**A checkpoint in Kafka.** The window's orders and the shop's new checkpoint (``pull-checkpoints``, compacted) are
written in one Kafka transaction: both or neither. A poller that dies mid-window, or a platform that fails
(refusals, an outage), leaves the checkpoint where the last finished window put it, and the next poll starts there
again: nothing lost, and what comes twice is recognised.

**Who polls which shop.** Every worker runs a puller thread in one consumer group over ``pull-checkpoints``; a shop
is polled by the owner of its checkpoint's partition, which first reads that partition to its end (the shop's last
checkpoint). Two pollers of one shop during a rebalance only pull some orders twice. The transactional id is the
worker's (``<app>.puller.w<i>``): a restarted worker fences its predecessor's open transaction.

Adapters speak the platform's list API; Taobao/Tmall's ``taobao.trades.sold.increment.get`` is here.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from agents.ingest.adapters.base import CST
from engine.kafka.clients import partition_for
from engine.kafka.transactions import Aborted, TxnProducer
from engine.settings import Settings
from engine.tenants import PullShop
from engine.topics import Topics
from schemas import wire
from schemas.deadletter import ReasonCode, dead_letter
from schemas.order import Channel
from schemas.pulling import PullCheckpoint, pull_key

log = logging.getLogger("oms.pull")

#: a list page larger than this is refused (and asked again): nothing the platform answers can exhaust a worker
MAX_PAGE_BYTES = 32 * 1024 * 1024


class ListRefused(Exception):
    """The platform refused or failed a list call (rate limit, outage, bad session): try again later."""


@dataclass(frozen=True)
class Page:
    orders: list[tuple[str, bytes]]  # (platform order id, the order as the platform gives it)
    has_next: bool


class OrderList(Protocol):
    def page(self, tenant: str, shop: str, start_ms: int, end_ms: int, page_no: int, size: int) -> Page: ...


def cst(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, CST).strftime("%Y-%m-%d %H:%M:%S")


class TaobaoOrderList:
    """``taobao.trades.sold.increment.get``: trades modified between two China-time seconds, ``use_has_next``."""

    def __init__(self, base_url: str, timeout_s: float = 10.0) -> None:
        self.url = base_url.rstrip("/") + "/router/rest"
        self.timeout_s = timeout_s

    def page(self, tenant: str, shop: str, start_ms: int, end_ms: int, page_no: int, size: int) -> Page:
        fields = {
            "method": "taobao.trades.sold.increment.get",
            "start_modified": cst(start_ms),
            "end_modified": cst(end_ms),
            "page_no": page_no,
            "page_size": size,
            "use_has_next": "true",
        }
        req = urllib.request.Request(
            self.url,
            data=urllib.parse.urlencode(fields).encode(),
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Oms-Tenant": tenant, "X-Oms-Shop": shop},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as res:
                raw = res.read(MAX_PAGE_BYTES + 1)
            if len(raw) > MAX_PAGE_BYTES:
                raise ListRefused(f"a page over {MAX_PAGE_BYTES} bytes (lower OMS_PULL_PAGE_SIZE)")
            doc = orjson.loads(raw)
        except (OSError, TimeoutError, orjson.JSONDecodeError) as exc:
            raise ListRefused(f"unreachable or unreadable: {exc}") from None
        if not isinstance(doc, dict):
            raise ListRefused("the answer is not a JSON object")
        if "error_response" in doc:
            raise ListRefused(str(doc["error_response"])[:300])
        answer = doc.get("trades_sold_increment_get_response")
        trades = (answer.get("trades") or {}).get("trade") if isinstance(answer, dict) else None
        if not isinstance(trades, list) and trades is not None:
            raise ListRefused("trades is not a list")
        orders = [(_tid(t), orjson.dumps(t)) for t in trades or []]
        return Page(orders, bool(answer.get("has_next")) if isinstance(answer, dict) else False)


def _tid(trade: Any) -> str:
    """The trade's id for its raw key; a trade without one keeps a key ingest dead-letters (``bad_key``)."""
    tid = (trade.get("tid_str") or trade.get("tid")) if isinstance(trade, dict) else None
    return str(tid) if tid is not None else "missing-tid"


@dataclass
class PullStats:
    windows: int = 0
    pages: int = 0
    orders: int = 0
    refused: int = 0  # list calls the platform refused or failed (each window tried again later)
    checkpoints: dict[str, int] = field(default_factory=dict)  # shop key -> modified_until


class OrderPuller(threading.Thread):
    """The pull side of ingest, one thread per worker (module docstring). ``stopping.set()`` to stop."""

    def __init__(
        self, settings: Settings, topics: Topics, shops: list[tuple[str, PullShop]], lists: dict[str, OrderList],
        worker_index: int,
    ) -> None:  # fmt: skip
        super().__init__(name="order-puller", daemon=True)
        self.settings, self.topics, self.lists = settings, topics, lists
        self.shops = {pull_key(t, s.channel, s.shop_id): (t, s) for t, s in shops}
        self.txn_id = f"{settings.app_id}.puller.w{worker_index}"
        self.stopping = threading.Event()
        self.counts = PullStats()
        self.checkpoints: dict[str, PullCheckpoint] = {}
        self._owned: set[int] = set()
        self._ends: dict[int, int] = {}  # partition -> its end offset when assigned (read up to it before polling)
        self._next: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def stats(self) -> dict[str, Any]:
        return {**vars(self.counts), "shops": sorted(k for k in self.shops if self._mine(k))}

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": f"{self.settings.app_id}-pullers",
                "enable.auto.commit": False,  # never committed: every owner reads the checkpoints from the start
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "enable.partition.eof": True,
            }
        )
        producer = TxnProducer(self.settings.bootstrap, self.txn_id, timeout_s=30.0)
        try:
            producer.init()
            consumer.subscribe([self.topics.pull_checkpoints], on_assign=self._assigned, on_revoke=self._revoked)
            while not self.stopping.is_set():
                for m in consumer.consume(500, timeout=0.2):
                    self._read(m)
                for key in sorted(self.shops):
                    if self._mine(key) and time.monotonic() >= self._next.get(key, 0.0):
                        self._pull(producer, key)
        except Exception:
            log.exception("order puller stopped")
        finally:
            consumer.close()

    # -- ownership ---------------------------------------------------------------------------------------------
    def _assigned(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            self._ends[tp.partition] = high if high > low else -1  # -1: nothing to read first
            self._owned.add(tp.partition)

    def _revoked(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        for tp in parts:
            self._owned.discard(tp.partition)
            self._ends.pop(tp.partition, None)

    def _mine(self, key: str) -> bool:
        p = partition_for(key, self.settings.partitions)
        return p in self._owned and self._ends.get(p, -1) == -1

    def _read(self, m: Any) -> None:
        p = m.partition()
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF and p in self._ends:
                self._ends[p] = -1  # read to its end: its shops' checkpoints are known
            return
        try:
            cp = wire.decode(m.value(), PullCheckpoint)
        except wire.WireError:
            return
        if cp.key not in self.checkpoints or cp.modified_until >= self.checkpoints[cp.key].modified_until:
            self.checkpoints[cp.key] = cp
        if p in self._ends and self._ends[p] != -1 and m.offset() + 1 >= self._ends[p]:
            self._ends[p] = -1

    # -- one window ----------------------------------------------------------------------------------------------
    def _pull(self, producer: TxnProducer, key: str) -> None:
        tenant, shop = self.shops[key]
        s = self.settings
        now = int(time.time() * 1000)
        last = self.checkpoints.get(key)
        start = max(0, (last.modified_until if last else now - s.pull_since_s * 1000) - s.pull_overlap_s * 1000)
        end = (now - int(s.pull_lag_s * 1000)) // 1000 * 1000
        orders: list[tuple[str, bytes]] = []
        page_no = 1
        try:
            while True:
                time.sleep(1.0 / max(1.0, s.pull_calls_per_s))  # the platform's rate limit, per shop
                page = self.lists[shop.channel].page(tenant, shop.shop_id, start, end, page_no, s.pull_page_size)
                self.counts.pages += 1
                orders += page.orders
                if not page.has_next or self.stopping.is_set():
                    break
                page_no += 1
        except ListRefused as exc:
            self.counts.refused += 1
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            log.warning("pull %s: %s (window kept; again in %ds)", key, exc, min(60, 2**failures))
            self._next[key] = time.monotonic() + min(60, 2**failures)
            return
        if self.stopping.is_set():
            return
        cp = PullCheckpoint(
            tenant=tenant, channel=shop.channel, shop_id=shop.shop_id, modified_until=end,
            windows=(last.windows if last else 0) + 1, pulled=(last.pulled if last else 0) + len(orders), ts=now,
        )  # fmt: skip
        raw = self.topics.raw[Channel(shop.channel)]
        producer.begin()
        for platform_id, body in orders:
            raw_key = f"{tenant}:{shop.shop_id}:{platform_id}".encode()
            if len(body) > s.max_payload_bytes:  # as ingest would for a push, but before the broker refuses it
                letter = dead_letter(
                    "pull", raw, -1, -1, raw_key, body, ReasonCode.OVERSIZE,
                    f"a pulled order of {len(body)} bytes exceeds {s.max_payload_bytes} (OMS_MAX_PAYLOAD_BYTES)", now,
                    tenant,
                )  # fmt: skip
                producer.produce(self.topics.dead_letters, raw_key, wire.encode(letter))
                continue
            producer.produce(raw, raw_key, body)
        producer.produce(self.topics.pull_checkpoints, cp.key.encode(), wire.encode(cp))
        try:
            producer.commit()  # the orders and the checkpoint, or neither
        except Aborted as exc:  # rolled back whole: the window is pulled again (a fenced producer stops the thread)
            log.warning("pull %s: %s; the window is pulled again", key, exc)
            producer.abort()
            self._next[key] = time.monotonic() + 1.0
            return
        self.checkpoints[key] = cp
        self.counts.windows += 1
        self.counts.orders += len(orders)
        self.counts.checkpoints[key] = end
        self._failures.pop(key, None)
        self._next[key] = time.monotonic() + shop.every_s
