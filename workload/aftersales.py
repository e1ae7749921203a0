"""The day after the goods leave, simulated the way the outside world does it: buyers come to the store for
their pickups, carriers scan parcels (by their integration's topic and by webhook), and some buyers send goods
back. What is sent is recorded as the truth the invariants check.

* **Pickups**: a thread follows the customer notifications from the start of the day; a buyer comes for most
  pickups (``CLAIM_RATE``) a moment after the code arrives, with that code; the rest are left to expire. The
  store's system claims like a real client: with an idempotency key of its own, sent again on a connection
  error, a timeout or a 5xx (with backoff, to another worker) until the engine answers; a 4xx is final. A claim
  counts as made when the engine took it (202) — or, when no answer ever came, when it is on the aftersales
  inbox (the request got there and only its answer was lost): a claim sent several times is one claim.
* **Carriers**: each shipped parcel's journey — picked up, in transit, out for delivery, delivered — with an
  exception on some, a return to sender on a few; each waybill's events shuffled, some sent twice; most by
  topic, a share by the webhook in batches.
* **Returns**: a share of the shipped orders is asked back through the API and received, mostly sellable.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer

from engine.kafka.clients import Sender, end_offsets, read_topics
from engine.settings import Settings
from engine.topics import Topics
from schemas import wire
from schemas.aftersales import AftersalesRecord, CustomerNotification, PickupClaim, ReceivedLine, ReturnReceived
from schemas.shipping import CarrierEvent, ShipmentShipped, TrackingStatus

CLAIM_RATE = 0.85  # pickups a buyer comes for; the rest expire
EXCEPTION_RATE = 0.03  # parcels with a problem in transit (they still arrive)
RETURNED_RATE = 0.01  # parcels returned to sender instead of delivered
DUPLICATE_RATE = 0.05  # events a carrier sends twice
WEBHOOK_SHARE = 0.1  # waybills whose events come by webhook (the rest by the integration's topic)
RETURN_RATE = 0.015  # shipped orders asked back
DAMAGED_RATE = 0.2  # returned units that are damaged
WEBHOOK_BATCH = 200
CLAIM_TIMEOUT_S = 10.0  # one claim request: a paused worker does not keep a buyer waiting longer
CLAIM_BACKOFF_S = (0.25, 4.0)  # first and longest wait before a claim is sent again
CLAIM_RETRY_FOR_S = 120.0  # how long a store's system keeps sending one claim
#: A buyer neither comes nor tries again this close to the pickup's deadline (record time): a claim sent then
#: (plus one request's timeout) could reach the engine after the deadline.
LATE_MARGIN_S = 15.0
JOURNEY = (TrackingStatus.PICKED_UP, TrackingStatus.IN_TRANSIT, TrackingStatus.OUT_FOR_DELIVERY)


def post(
    url: str, body: Any, token: str, timeout_s: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One JSON POST with the tenant's token (stdlib only); (status, answer); status 0: no answer."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}", **(headers or {})}
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {"raw": exc.read()[:300].decode(errors="replace")}
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return 0, {"error": str(exc)}


@dataclass(eq=False)
class PickupDesk(threading.Thread):
    """Buyers at the stores' pickup desks: claim most pickups, with the code the engine sent them."""

    settings: Settings
    topics: Topics
    tokens: dict[str, str]
    workers: int
    seed: int
    claimed: set[str] = field(default_factory=set)  # order keys whose claim the engine took (202, or on the inbox)
    refused: dict[str, int] = field(default_factory=dict)  # order key -> the 4xx that refused its claim (final)
    unanswered: dict[str, str] = field(default_factory=dict)  # order key -> claim id: sent, never answered
    too_late: set[str] = field(default_factory=set)  # codes that came too close to the deadline: nobody came
    announced: set[str] = field(default_factory=set)
    last_announced: float = 0.0  # monotonic time the last pickup code arrived
    retries: int = 0  # claims sent again (no answer, or a 5xx)
    sent: int = 0  # claim requests made

    def __post_init__(self) -> None:
        threading.Thread.__init__(self, name="oms-pickup-desk", daemon=True)
        self.stopping = threading.Event()

    @property
    def failed(self) -> int:
        return len(self.refused) + len(self.unanswered)

    def run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": f"{self.settings.app_id}-pickup-desk",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
            }
        )
        consumer.subscribe([self.topics.notifications])
        try:
            while not self.stopping.is_set():
                for m in consumer.consume(200, timeout=0.5):
                    if m.error():
                        continue
                    note = wire.decode(m.value(), CustomerNotification)
                    if note.template != "pickup_ready" or note.key in self.announced:
                        continue
                    self.announced.add(note.key)
                    self.last_announced = time.monotonic()
                    if random.Random(f"{self.seed}:{note.key}").random() >= CLAIM_RATE:
                        continue  # this buyer never comes
                    self.claim(note)
        finally:
            consumer.close()

    def claim_id(self, note: CustomerNotification) -> str:
        """The store system's idempotency key for this buyer's claim: the same on every try."""
        return "desk." + hashlib.blake2b(f"{self.seed}:{note.key}".encode(), digest_size=10).hexdigest()

    def claim(self, note: CustomerNotification) -> None:
        """One buyer's claim, sent until the engine answers: 202 taken, a 4xx refused for good; no answer or a
        5xx (a worker killed, paused or taking over) sent again, to the next worker, with the same claim id."""
        claim_id = self.claim_id(note)
        body = {"code": note.params["code"], "store": note.params["store"], "claim_id": claim_id}
        path = f"/api/v1/{note.tenant}/orders/{note.order_id}/pickup"
        last_ms = note.ts + (self.settings.pickup_hold_s - LATE_MARGIN_S) * 1000  # ready at note.ts (record time)
        give_up = time.monotonic() + CLAIM_RETRY_FOR_S
        wait_s, tries = CLAIM_BACKOFF_S[0], 0
        while True:
            if time.time() * 1000 >= last_ms or time.monotonic() >= give_up or self.stopping.is_set():
                if tries == 0:
                    self.too_late.add(note.key)  # never sent: the buyer did not come in time
                else:
                    self.unanswered[note.key] = claim_id  # sent, fate unknown: see resolve()
                return
            port = self.settings.web_port + self.sent % self.workers
            self.sent += 1
            tries += 1
            url = f"http://127.0.0.1:{port}{path}"
            status, _ = post(url, body, self.tokens[note.tenant], CLAIM_TIMEOUT_S, {"Idempotency-Key": claim_id})
            if status == 202:
                self.claimed.add(note.key)
                return
            if 400 <= status < 500:
                self.refused[note.key] = status
                return
            self.retries += 1
            self.stopping.wait(wait_s)
            wait_s = min(wait_s * 2, CLAIM_BACKOFF_S[1])

    def resolve(self) -> None:
        """Claims never answered: made if they are on the aftersales inbox (what was sent, not what the engine
        made of it), not made otherwise."""
        if not self.unanswered:
            return
        wanted = set(self.unanswered.values())
        for m in read_topics(self.settings.bootstrap, [self.topics.aftersales_inbox]):
            try:
                record = wire.decode(m.value, AftersalesRecord)
            except wire.WireError:
                continue
            if isinstance(record, PickupClaim) and record.claim_id in wanted and record.key in self.unanswered:
                self.claimed.add(record.key)
                del self.unanswered[record.key]
                wanted.discard(record.claim_id)

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=CLAIM_TIMEOUT_S + 10)
        self.resolve()


@dataclass
class CarrierDay:
    events: list[CarrierEvent] = field(default_factory=list)
    by_webhook: int = 0
    webhook_refused: int = 0
    waybills: int = 0


def shipped_parcels(settings: Settings, topics: Topics) -> list[tuple[ShipmentShipped, Any]]:
    seen: dict[str, ShipmentShipped] = {}
    for m in read_topics(settings.bootstrap, [topics.shipped]):
        shipped = wire.decode(m.value, ShipmentShipped)
        seen.setdefault(f"{shipped.tenant}:{shipped.shipment_id}", shipped)
    return [(s, p) for s in seen.values() for p in s.parcels]


def carriers_scan(
    settings: Settings,
    topics: Topics,
    parcels: list[tuple[ShipmentShipped, Any]],
    tokens: dict[str, str],
    workers: int,
    seed: int,
) -> CarrierDay:
    """Every shipped parcel's journey, as carriers report it: shuffled per waybill, some events twice."""
    rng = random.Random(seed * 613)
    day = CarrierDay()
    by_topic: list[CarrierEvent] = []
    by_hook: dict[str, list[CarrierEvent]] = {}
    for shipped, parcel in parcels:
        day.waybills += 1
        steps = list(JOURNEY)
        if rng.random() < EXCEPTION_RATE:
            steps.insert(2, TrackingStatus.EXCEPTION)
        steps.append(TrackingStatus.RETURNED if rng.random() < RETURNED_RATE else TrackingStatus.DELIVERED)
        events = [
            CarrierEvent(
                tenant=shipped.tenant,
                carrier=parcel.carrier,
                waybill=parcel.waybill,
                event_id=f"{parcel.waybill}-{j}",
                status=status,
                occurred_at=shipped.ts + 3_600_000 * (j + 1),
                location="",
            )
            for j, status in enumerate(steps)
        ]
        if TrackingStatus.EXCEPTION in steps:  # the problem is reported before the parcel moves on
            head, tail = events[:3], events[3:]
            rng.shuffle(tail)
            events = head + tail
        else:
            rng.shuffle(events)
        events += [e for e in events if rng.random() < DUPLICATE_RATE]
        day.events.extend(events)
        if rng.random() < WEBHOOK_SHARE:
            by_hook.setdefault(shipped.tenant, []).extend(events)
        else:
            by_topic.extend(events)
    sender = Sender(settings.bootstrap)
    for event in by_topic:
        sender.send(topics.tracking_inbox, event.key, wire.encode(event))
    sender.flush()
    n = 0
    for tenant, events in by_hook.items():
        for start in range(0, len(events), WEBHOOK_BATCH):
            batch = events[start : start + WEBHOOK_BATCH]
            body = [{k: v for k, v in wire.to_builtins(e).items() if k not in ("kind", "tenant")} for e in batch]
            url = f"http://127.0.0.1:{settings.web_port + n % workers}/api/v1/{tenant}/carrier-events"
            n += 1
            status, _ = post(url, body, tokens[tenant])
            if status == 202:
                day.by_webhook += len(batch)
            else:  # refused whole: the integration sends it by topic instead
                day.webhook_refused += len(batch)
                for event in batch:
                    sender.send(topics.tracking_inbox, event.key, wire.encode(event))
                sender.flush()
    return day


@dataclass
class ReturnsDay:
    requested: int = 0
    received: list[ReturnReceived] = field(default_factory=list)
    refused: int = 0


def send_returns(
    settings: Settings, parcels: list[tuple[ShipmentShipped, Any]], tokens: dict[str, str], workers: int, seed: int
) -> ReturnsDay:
    """A share of the shipped orders' lines asked back and received at the warehouse they left from."""
    rng = random.Random(seed * 827)
    day = ReturnsDay()
    lines: dict[tuple[str, str], dict[str, tuple[str, int]]] = {}  # (tenant, order) -> line -> (warehouse, units)
    for shipped, parcel in parcels:
        for ln in parcel.lines:
            units = lines.setdefault((shipped.tenant, ln.order_id), {})
            held = units.get(ln.line_id, (shipped.warehouse, 0))
            units[ln.line_id] = (held[0], held[1] + ln.units)
    n = 0
    for (tenant, order_id), shipped_lines in sorted(lines.items()):
        if rng.random() >= RETURN_RATE:
            continue
        line_id, (warehouse, units) = sorted(shipped_lines.items())[0]
        return_id = f"RMA-{order_id}"
        base = f"http://127.0.0.1:{settings.web_port + n % workers}/api/v1/{tenant}/orders/{order_id}/returns"
        n += 1
        status, _ = post(
            base, {"return_id": return_id, "lines": [{"line_id": line_id, "quantity": units}]}, tokens[tenant]
        )
        if status != 202:
            day.refused += 1
            continue
        day.requested += 1
        damaged = sum(1 for _ in range(units) if rng.random() < DAMAGED_RATE)
        received = (
            [ReceivedLine(line_id=line_id, quantity=units - damaged, disposition="sellable")] if units > damaged else []
        )
        received += [ReceivedLine(line_id=line_id, quantity=damaged, disposition="damaged")] if damaged else []
        body = {"warehouse": warehouse, "lines": [wire.to_builtins(ln) for ln in received]}
        status, _ = post(f"{base}/{return_id}/receipt", body, tokens[tenant])
        if status != 202:
            day.refused += 1
            continue
        day.received.append(
            ReturnReceived(
                tenant=tenant, order_id=order_id, return_id=return_id, warehouse=warehouse, lines=received, ts=0
            )
        )
    return day


def wait_quiet(
    settings: Settings, watched: list[str], quiet_s: float, timeout_s: float, supervise: Callable[[], None]
) -> bool:
    """Until nothing new was written to the ``watched`` topics for ``quiet_s``; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        supervise()
        ends = [end_offsets(settings.bootstrap, topic, settings.partitions) for topic in watched]
        if ends != last:
            last, since = ends, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
        time.sleep(0.5)
    return False
