"""What a Locust run offers the engine, shared by the locustfile (under gevent) and the runner (without it).

* the rate presets and the :class:`Plan` that turns an order rate into users and a pace per user;
* each user's endless stream of channel deliveries, from the repo's own generator and renderers, with order ids
  (and buyers) that belong to that stream alone, so a long run never redelivers another user's order;
* the log of what was sent (:class:`SentLog`): the truth the runner checks the invariants against afterwards.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from schemas.order import Channel, Order, order_id
from workload.channels import Delivery, channel_day
from workload.generator import CHANNEL_MIX, Workload, WorkloadSpec

DAY_S = 86_400
#: ``--rate`` presets: a retailer's ordinary 100,000 orders a day, then ten and a hundred times that.
PRESETS: dict[str, float] = {"100k": 100_000 / DAY_S, "10x": 1_000_000 / DAY_S, "100x": 10_000_000 / DAY_S}
#: Share of orders the retailer's own systems (web store, POS) post to the API; the rest arrive on raw topics.
HTTP_SHARE = CHANNEL_MIX[Channel.WEB] + CHANNEL_MIX[Channel.POS]
#: The header that carries when a raw record was produced (ms since the epoch, ASCII).
PRODUCED_HEADER = "oms-produced-at"
#: Locust request type of a decision event, and the name of the row that merges every channel's decisions.
DECISION = "decision"
ALL_CHANNELS = "(all channels)"
#: Orders one generator run makes before a stream moves on to the next (the generator's day is finite).
CHUNK = 2_000
#: Most users a stream number leaves room for per Locust process.
USERS_PER_PROCESS = 1_000


def parse_rate(text: str | float) -> float:
    """Orders per second from a preset (``100k``, ``10x``, ``100x``) or a number."""
    value = PRESETS.get(str(text).strip().lower()) if isinstance(text, str) else None
    if value is None:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"rate {text!r}: use one of {', '.join(PRESETS)} or orders per second") from None
    if not 0 < value <= 10_000:
        raise ValueError(f"rate {text!r}: orders per second must be in (0, 10000]")
    return value


_SPAN = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")


def parse_duration(text: str | float) -> float:
    """Seconds from ``90``, ``90s``, ``2m``, ``1h30m`` (Locust's ``--run-time`` format)."""
    spec = str(text).strip().lower()
    parts = _SPAN.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise ValueError(f"duration {text!r}: use seconds, or e.g. 90s, 2m, 1h30m")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "": 1}[u] for n, u in parts)


@dataclass(frozen=True)
class Plan:
    """How many users of each kind offer ``orders_per_s`` and how fast each of them goes.

    Every Locust process computes the same plan from the same options, so the user counts are global and each
    user's pace is its share of its route's rate."""

    orders_per_s: float
    http_share: float
    http_batch: int
    kafka_users: int
    http_users: int

    @classmethod
    def make(
        cls,
        orders_per_s: float,
        http_share: float = HTTP_SHARE,
        http_batch: int = 0,
        kafka_user_max: float = 25.0,
        http_user_max: float = 4.0,
    ) -> Plan:
        """``http_batch`` 0 picks a batch that keeps each HTTP user near 2 requests/s (1 at low rates);
        ``kafka_user_max`` orders/s and ``http_user_max`` requests/s bound what one user is asked to do."""
        if not 0 <= http_share <= 1:
            raise ValueError("http share must be between 0 and 1")
        kafka_rate, http_rate = orders_per_s * (1 - http_share), orders_per_s * http_share
        batch = http_batch or max(1, min(50, round(http_rate / 2)))
        return cls(
            orders_per_s=orders_per_s,
            http_share=http_share,
            http_batch=batch,
            kafka_users=math.ceil(kafka_rate / kafka_user_max) if kafka_rate > 0 else 0,
            http_users=math.ceil(http_rate / batch / http_user_max) if http_rate > 0 else 0,
        )

    @property
    def users(self) -> int:
        return self.kafka_users + self.http_users

    @property
    def kafka_interval_s(self) -> float:
        """Seconds between two orders of one Kafka user."""
        return self.kafka_users / (self.orders_per_s * (1 - self.http_share))

    @property
    def http_interval_s(self) -> float:
        """Seconds between two requests (``http_batch`` orders each) of one HTTP user."""
        return self.http_users * self.http_batch / (self.orders_per_s * self.http_share)


class Pacer:
    """A fixed schedule: a user's n-th task is due at ``start + n * interval``. A late task is caught up (at most
    ``catch_up_s`` worth of them at once) instead of lowering the offered rate, as Locust's ``constant_throughput``
    would."""

    def __init__(self, interval_s: float, catch_up_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self.catch_up_s = max(catch_up_s, interval_s)
        self.due = time.monotonic()

    def wait(self) -> float:
        now = time.monotonic()
        self.due = max(self.due + self.interval_s, now - self.catch_up_s)
        return max(0.0, self.due - now)


class NewOrders:
    """Tells the delivery that starts an order the stream has not sent before: what the offered rate counts.
    Redeliveries, a channel's follow-ups (paid later, cancelled, refunded, unlocked) and bad payloads ride along
    with the orders around them. The generator repeats an order within 200 orders, so a few thousand keys do."""

    def __init__(self, memory: int = 4096) -> None:
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self._memory = memory

    def __call__(self, d: Delivery) -> bool:
        if d.kind != "order" or d.intent is None or d.intent.key in self._seen:
            return False
        self._seen.add(d.intent.key)
        self._order.append(d.intent.key)
        if len(self._order) > self._memory:
            self._seen.discard(self._order.popleft())
        return True


def stream_number(process: int, user: int) -> int:
    if not 0 <= user < USERS_PER_PROCESS or not 0 <= process < 10:
        raise ValueError(f"stream for process {process}, user {user}: at most 10 processes of 1000 users")
    return process * USERS_PER_PROCESS + user


def stream_orders(stream: int, salt: int, seed: int, chunk: int = CHUNK) -> Iterator[Order]:
    """Endless generator orders that belong to ``stream`` alone.

    The generator numbers a day's orders from a fixed base, so two users (or two chunks) would send the same
    platform ids. Each order is renumbered ``3 SSS UUUU NNNNNNNN`` (salt, stream, sequence: 16 digits, so the
    Taobao and Shopify renderers' numeric line ids stay within 64 bits), and its buyer is scoped to the chunk,
    which keeps the generator's orders-per-buyer (what velocity rules see) instead of piling every chunk's
    orders onto the same few buyers. A duplicate keeps its original's new id, as a redelivery must."""
    if not 0 <= stream < 10_000 or not 0 <= salt < 1_000:
        raise ValueError("stream must be below 10000 and salt below 1000")
    seq = 0
    for part in itertools.count():
        workload = Workload(WorkloadSpec(orders=chunk, seed=chunk_seed(seed, stream, part)))
        renamed: dict[str, str] = {}
        for o in workload.orders():
            pid = renamed.get(o.platform_order_id)
            if pid is None:
                if seq >= 10**8:
                    raise RuntimeError(f"stream {stream} ran out of order ids")
                pid = renamed[o.platform_order_id] = f"3{salt:03d}{stream:04d}{seq:08d}"
                seq += 1
            buyer = msgspec.structs.replace(o.buyer, id=f"{o.buyer.id}.{stream}.{part}")
            yield msgspec.structs.replace(
                o, platform_order_id=pid, order_id=order_id(o.channel, o.shop_id, pid), buyer=buyer
            )


def chunk_seed(seed: int, stream: int, part: int) -> int:
    return (seed * 1_000_003 + stream * 10_007 + part) % 2**31


def stream_deliveries(stream: int, salt: int, seed: int) -> Iterator[Delivery]:
    """The stream's orders as the channels send them (``workload.channels.channel_day``): each platform's JSON,
    with redeliveries, unpaid orders paid later, cancellations, refunds, platform locks and bad payloads."""
    return channel_day(stream_orders(stream, salt, seed), chunk_seed(seed, stream, 10**6))


# -- what was sent ---------------------------------------------------------------------------------------------
class SentRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One delivery the engine took in: the snapshot it means, or (raw topics only) the bytes crafted to be bad."""

    via: str
    order: Order | None = None
    bad: bytes | None = None


class SentLog:
    """Appends, per Locust process, what the engine took in (a raw record the broker acknowledged, an order the
    API answered accepted or duplicate). The runner reads every process's file once the run is over."""

    def __init__(self, directory: str | Path, name: str) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / f"sent-{name}.jsonl"
        self._file = self.path.open("ab")
        self._encoder = msgspec.json.Encoder()
        self.count = 0

    def record(self, d: Delivery) -> None:
        if d.intent is not None:
            entry = SentRecord(via=d.via, order=d.intent)
        elif d.kind == "bad" and d.via == "kafka":
            entry = SentRecord(via=d.via, bad=d.body)
        else:
            return
        self._file.write(self._encoder.encode(entry) + b"\n")
        self.count += 1

    def close(self) -> None:
        self._file.close()


@dataclass
class Sent:
    orders: list[Order]  # every snapshot taken in, per file in sending order
    bad_records: set[bytes]
    files: int


def read_sent(directory: str | Path) -> Sent:
    """Every process's sent log (a line cut short by a killed process is skipped: it was never confirmed)."""
    decoder = msgspec.json.Decoder(SentRecord)
    orders: list[Order] = []
    bad: set[bytes] = set()
    files = sorted(Path(directory).glob("sent-*.jsonl"))
    for path in files:
        for line in path.read_bytes().splitlines():
            try:
                entry = decoder.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if entry.order is not None:
                orders.append(entry.order)
            elif entry.bad is not None:
                bad.add(entry.bad)
    return Sent(orders, bad, len(files))


def parse_tokens(text: str) -> dict[str, str]:
    """``tenant=token,tenant=token`` (the API tokens of the tenants the generator sells for)."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        tenant, sep, token = part.partition("=")
        if not sep or not tenant or not token:
            raise ValueError("tokens: use tenant=token[,tenant=token]")
        out[tenant.strip()] = token.strip()
    return out


def format_tokens(tokens: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{t}={tok}" for t, tok in tokens)
