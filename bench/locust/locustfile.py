"""Locust load scenarios: channel orders at a fixed rate through both edges, each order timed to its decision.

    locust -f bench/locust/locustfile.py --headless -t 60s --stop-timeout 30 --csv .oms/locust/10x \\
        --orders-per-s 10x --topic-prefix oms --bootstrap 127.0.0.1:9092 \\
        --api-url http://127.0.0.1:6066,http://127.0.0.1:6067 --tokens acme=…,blue=…

* ``KafkaOrders`` produces marketplace payloads (Tmall/Taobao, JD, Douyin, Shopify) onto the raw channel topics
  the way an integration does: confluent-kafka, murmur2, idempotent, key ``tenant:shop_id:platform_order_id``,
  the produce time in an ``oms-produced-at`` header, ``poll(0)`` (never blocking a greenlet); the broker's ack
  is a ``kafka`` request, a failed delivery a Locust failure.
* ``HttpOrders`` posts web store and POS payloads to ``POST /api/v1/{tenant}/{channel}/{shop}/orders`` with the
  tenant's bearer token, singly or in batches; an order the API refuses is a failure unless it was crafted bad.
* One decision watcher per process reads ``order-decisions`` (``read_committed``, from where it stood when the
  test started) and reports each of its orders' decisions as a ``decision`` request named after the channel:
  response time = arrival of the decision − when the order was produced (Kafka) or its request sent (HTTP).
* ``FixedOrderRate`` sizes the users from ``--orders-per-s`` and paces each one on a fixed schedule, so the run
  offers that rate whatever the engine does (an open workload), and stops after ``--run-time``.

Orders come from ``workload.generator`` and ``workload.channels`` (see ``bench/locust/scenario.py``); each user's
stream has its own order ids. With ``--sent-dir`` every process logs what the engine took in, for the invariant
check of ``python -m bench.locust``. One process is enough up to 100× (≈116 orders/s); ``--processes`` is not
supported (the "all channels" decision row and the sent log assume one process).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import gevent
import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from locust import HttpUser, LoadTestShape, User, events, task
from locust.env import Environment
from locust.exception import StopUser

from bench.locust.scenario import (
    ALL_CHANNELS,
    DECISION,
    HTTP_SHARE,
    PRODUCED_HEADER,
    NewOrders,
    Pacer,
    Plan,
    SentLog,
    parse_rate,
    parse_tokens,
    stream_deliveries,
    stream_number,
)
from engine.kafka.admin import CLIENT_LOG
from engine.kafka.clients import producer as kafka_producer
from engine.kafka.clients import watermarks
from engine.topics import Topics
from schemas import wire
from schemas.saga import ENGINE_REASONS, OrderDecision
from workload.channels import Delivery
from workload.stock import SENT_HEADER

log = logging.getLogger("oms.locust")


class DeliveryFailed(Exception):
    """The broker did not take a raw record."""


class EngineFailure(Exception):
    """The engine rejected an order by its own fault (``engine_error``)."""


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument(
        "--orders-per-s",
        default="100k",
        env_var="OMS_LOCUST_ORDERS_PER_S",
        help="Orders per second the run offers: 100k (≈1.16/s), 10x, 100x, or a number",
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP") or "127.0.0.1:9092",
        help="Kafka bootstrap servers (default KAFKA_BOOTSTRAP, else the local broker)",
    )
    parser.add_argument(
        "--topic-prefix",
        default=os.environ.get("OMS_TOPIC_PREFIX") or "oms",
        help="Prefix of the engine's topics (default OMS_TOPIC_PREFIX, else oms)",
    )
    parser.add_argument(
        "--api-url",
        default="",
        env_var="OMS_LOCUST_API_URL",
        help="Comma-separated base URLs of the workers' APIs (default: --host, else http://127.0.0.1:6066)",
    )
    parser.add_argument(
        "--tokens", default="", env_var="OMS_LOCUST_TOKENS", is_secret=True, help="tenant=token,... for the API"
    )
    parser.add_argument("--http-share", type=float, default=HTTP_SHARE, help="Share of orders sent through the API")
    parser.add_argument("--http-batch", type=int, default=0, help="Orders per API request (0: by rate)")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the order streams")
    parser.add_argument("--id-salt", type=int, default=-1, help="0-999 in every order id (-1: from the clock)")
    parser.add_argument("--sent-dir", default="", help="Log what the engine took in here (for the invariants)")
    parser.add_argument("--drain-s", type=float, default=15.0, help="At the end, wait this long for decisions")


class Scenario:
    """What one Locust process shares: the plan, one Kafka producer, the decision watcher and the sent log."""

    def __init__(self, environment: Environment) -> None:
        opts = environment.parsed_options
        self.env = environment
        self.plan = Plan.make(parse_rate(opts.orders_per_s), opts.http_share, opts.http_batch)
        self.topics = Topics(opts.topic_prefix)
        self.bootstrap: str = opts.bootstrap
        self.tokens = parse_tokens(opts.tokens)
        urls = opts.api_url or opts.host or "http://127.0.0.1:6066"
        self.api_urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        self.salt = opts.id_salt if opts.id_salt >= 0 else int(time.time()) % 1000
        self.seed: int = opts.seed
        self.sent_dir: str = opts.sent_dir
        self.drain_s: float = opts.drain_s
        self.producer: Producer | None = None
        self.watch: DecisionWatch | None = None
        self.sent: SentLog | None = None
        self._users = itertools.count()
        self._poller: gevent.Greenlet | None = None
        self._stopping = False

    def start(self) -> None:
        if self.producer is not None:
            return
        self._stopping = False
        self.watch = DecisionWatch(self.env, self.bootstrap, self.topics.order_decisions)
        self.producer = kafka_producer(self.bootstrap, **{"linger.ms": 5})
        self._poller = gevent.spawn(self._poll)
        if self.sent_dir:
            self.sent = SentLog(self.sent_dir, str(os.getpid()))

    def next_stream(self) -> Iterator[Delivery]:
        stream = stream_number(0, next(self._users))
        return stream_deliveries(stream, self.salt, self.seed)

    def _poll(self) -> None:
        """Serve delivery reports while users wait (users also ``poll(0)`` after each produce)."""
        while not self._stopping and self.producer is not None:
            self.producer.poll(0)
            gevent.sleep(0.005)

    def produce(self, d: Delivery) -> None:
        """One raw record; its ack (or failure) is reported from a later ``poll``. Never blocks the greenlet."""
        assert self.producer is not None and self.watch is not None
        sent_ms = int(time.time() * 1000)
        started = time.perf_counter()
        name = f"raw.{d.channel.value}"
        self.watch.expect(d, sent_ms)

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            elapsed = (time.perf_counter() - started) * 1000
            if err is None and self.sent is not None:
                self.sent.record(d)
            if err is not None and self.watch is not None:
                self.watch.forget(d)
            self.env.events.request.fire(
                request_type="kafka",
                name=name,
                response_time=elapsed,
                response_length=len(d.body),
                exception=None if err is None else DeliveryFailed(str(err)),
                context={},
            )

        stamp = str(sent_ms).encode()
        while True:
            try:
                self.producer.produce(
                    self.topics.raw[d.channel],
                    value=d.body,
                    key=d.raw_key,
                    headers=[(PRODUCED_HEADER, stamp), (SENT_HEADER, stamp)],
                    on_delivery=delivered,
                )
                break
            except BufferError:  # the local queue is full: let it drain without blocking other greenlets
                self.producer.poll(0)
                gevent.sleep(0.01)
        self.producer.poll(0)

    def stop(self) -> None:
        """Deliver what is queued, wait for the decisions still due, add the all-channels row, close the log."""
        if self.producer is None:
            return
        deadline = time.monotonic() + 30
        while len(self.producer) and time.monotonic() < deadline:
            self.producer.poll(0)
            gevent.sleep(0.02)
        self._stopping = True
        self.producer.poll(0)
        if len(self.producer):
            log.error("%d raw records still undelivered at the end", len(self.producer))
        if self.watch is not None:
            self.watch.drain(self.drain_s)
            self.watch.close()
            merge_decisions(self.env)
        if self.sent is not None:
            self.sent.close()
            log.info("sent log: %d records in %s", self.sent.count, self.sent.path)
        self.producer = None
        self.sent = None
        gevent.sleep(1.2)  # the CSV writer rewrites its files every second: let it write the final numbers


class DecisionWatch:
    """Follows the decision topic from where it ends when the test starts and reports each decision of an order
    this process sent as a Locust ``decision`` request (the latency a downstream consumer sees)."""

    def __init__(self, environment: Environment, bootstrap: str, topic: str) -> None:
        self.env = environment
        self.pending: dict[str, tuple[int, str]] = {}  # decision key -> (sent ms, channel)
        self.decided: set[str] = set()
        self.last_decision = time.monotonic()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"oms-locust-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "logger": CLIENT_LOG,
            }
        )
        md = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            self._consumer.close()
            raise RuntimeError(f"no topic {topic!r} on {bootstrap}: is --topic-prefix right?")
        starts = [TopicPartition(topic, p, watermarks(self._consumer, topic, p)[1]) for p in md.partitions]
        self._consumer.assign(starts)
        self._closed = False
        self._greenlet = gevent.spawn(self._run)

    def expect(self, d: Delivery, sent_ms: int) -> None:
        """The clock of an order starts with its first delivery; an update that makes it decidable (paid later,
        unlocked) restarts it. Cancellations and refunds do not."""
        if d.intent is None or d.intent.key in self.decided:
            return
        if d.kind == "order":
            self.pending.setdefault(d.intent.key, (sent_ms, d.channel.value))
        elif d.kind in ("update", "unlock"):
            self.pending[d.intent.key] = (sent_ms, d.channel.value)

    def forget(self, d: Delivery) -> None:
        if d.intent is not None and d.kind == "order":
            self.pending.pop(d.intent.key, None)

    def _run(self) -> None:
        while not self._closed:
            msgs = self._consumer.consume(num_messages=1000, timeout=0)
            now_ms = time.time() * 1000
            for m in msgs:
                if m.error() is None:
                    self._on(m.value() or b"", now_ms)
            gevent.sleep(0 if msgs else 0.01)  # a busy topic must not starve the users

    def _on(self, value: bytes, now_ms: float) -> None:
        try:
            d = wire.decode(value, OrderDecision)
        except wire.WireError:
            return
        found = self.pending.pop(d.key, None)
        if found is None:  # another process's order, a copy, or from before the test
            return
        self.decided.add(d.key)
        self.last_decision = time.monotonic()
        sent_ms, channel = found
        failed = d.reason in ENGINE_REASONS
        self.env.events.request.fire(
            request_type=DECISION,
            name=channel,
            response_time=max(0.0, now_ms - sent_ms),
            response_length=len(value),
            exception=EngineFailure(f"{d.key}: {d.reason}: {d.detail}") if failed else None,
            context={"status": d.status.value},
        )

    def drain(self, timeout_s: float, quiet_s: float = 3.0) -> None:
        """Until the decisions of the last orders are in: none pending, nothing new for ``quiet_s`` (counted from
        the start of the drain at the earliest), or ``timeout_s``. Orders that wait for payment or an operator
        stay pending; they are not failures."""
        start = time.monotonic()
        while self.pending and time.monotonic() < start + timeout_s:
            if time.monotonic() - max(self.last_decision, start) >= quiet_s:
                break
            gevent.sleep(0.1)
        log.info("%d decided, %d without a decision (held or awaiting payment)", len(self.decided), len(self.pending))

    def close(self) -> None:
        self._closed = True
        self._greenlet.join(timeout=2)
        with contextlib.suppress(RuntimeError):
            self._consumer.close()


def merge_decisions(environment: Environment) -> None:
    """Locust aggregates only over everything; the decision latency over all channels is its own row."""
    stats = environment.stats
    rows = [e for (name, method), e in list(stats.entries.items()) if method == DECISION and name != ALL_CHANNELS]
    if rows:
        total = stats.get(ALL_CHANNELS, DECISION)
        total.reset()  # a second test in the same process starts from its own rows
        for entry in rows:
            total.extend(entry)


SCENARIO: Scenario | None = None


def scenario() -> Scenario:
    assert SCENARIO is not None, "the locustfile's init listener has not run"
    return SCENARIO


@events.init.add_listener
def _init(environment: Environment, **_kw: Any) -> None:
    global SCENARIO
    opts = environment.parsed_options
    if opts is None:  # imported by a tool, not a run
        return
    if opts.master or opts.worker or (opts.processes or 1) != 1:
        # the decision watcher, the all-channels row and the stream numbers assume one process
        raise SystemExit("oms locust: run one process (no --processes, --master, --worker); it suffices up to 100x")
    SCENARIO = Scenario(environment)
    plan = SCENARIO.plan
    KafkaOrders.fixed_count = plan.kafka_users
    HttpOrders.fixed_count = plan.http_users
    HttpOrders.host = SCENARIO.api_urls[0]
    if plan.http_users and not SCENARIO.tokens:
        raise SystemExit("oms locust: HTTP users need API tokens: --tokens tenant=token,… or OMS_LOCUST_TOKENS")
    # an HTTP user stopped mid-request would leave it unknown whether the engine took the order in
    environment.stop_timeout = max(environment.stop_timeout or 0.0, 30.0)
    log.info("plan: %s", plan)


@events.test_start.add_listener
def _test_start(environment: Environment, **_kw: Any) -> None:
    try:
        scenario().start()
    except Exception as exc:  # the broker is away, or the topics are not there: no test to run
        log.error("the scenario could not start: %s", exc)
        environment.process_exit_code = 2
        gevent.spawn_later(0, environment.runner.quit)


@events.test_stop.add_listener
def _test_stop(environment: Environment, **_kw: Any) -> None:
    scenario().stop()


class KafkaOrders(User):
    """A marketplace integration: each task produces the next new order of its stream onto the raw channel
    topics, with whatever the channel sent before it (redeliveries, follow-ups, bad payloads)."""

    fixed_count = 1

    def on_start(self) -> None:
        s = scenario()
        self.stream = s.next_stream()
        self.new_order = NewOrders()
        self.pacer = Pacer(s.plan.kafka_interval_s)

    def wait_time(self) -> float:
        return self.pacer.wait()

    @task
    def produce_order(self) -> None:
        s = scenario()
        if s.producer is None:
            raise StopUser()  # the scenario could not start (or has stopped)
        for d in self.stream:
            if d.via == "http" or (d.via == "webhook" and d.kind == "bad"):
                continue  # the API's share, and payloads crafted for the webhook edge
            s.produce(d)
            if self.new_order(d):
                return


class HttpOrders(HttpUser):
    """The web store and the POS: each task posts ``http_batch`` new orders of one tenant, channel and shop (with
    the follow-ups gathered with them; a JSON array, or one object when it is one delivery). A payload crafted
    bad is posted alone and must be refused."""

    fixed_count = 1
    host = "http://127.0.0.1:6066"

    def on_start(self) -> None:
        s = scenario()
        self.stream = s.next_stream()
        self.new_order = NewOrders()
        self.pacer = Pacer(s.plan.http_interval_s)
        self.urls = itertools.cycle(s.api_urls)
        self.buffers: dict[tuple[str, str, str], list[Delivery]] = defaultdict(list)
        self.orders: dict[tuple[str, str, str], int] = defaultdict(int)

    def wait_time(self) -> float:
        return self.pacer.wait()

    @task
    def post_orders(self) -> None:
        if scenario().producer is None:
            raise StopUser()  # the scenario could not start (or has stopped)
        batch = scenario().plan.http_batch
        for d in self.stream:
            if d.via != "http":
                continue
            where = (d.tenant, d.channel.value, d.shop)
            if d.kind == "bad":
                self._post(where, [d])
                continue
            self.buffers[where].append(d)
            self.orders[where] += self.new_order(d)
            if self.orders[where] >= batch:
                self.orders.pop(where)
                self._post(where, self.buffers.pop(where))
                return

    def _post(self, where: tuple[str, str, str], items: list[Delivery]) -> None:
        s = scenario()
        tenant, channel, shop = where
        single = len(items) == 1
        body = items[0].body if single else b"[" + b",".join(d.body for d in items) + b"]"
        url = f"{next(self.urls)}/api/v1/{tenant}/{channel}/{shop}/orders"
        name = f"/api/v1/:tenant/{channel}/:shop/orders" + (" (bad payload)" if items[0].kind == "bad" else "")
        headers = {"Authorization": f"Bearer {s.tokens.get(tenant, '')}", "Content-Type": "application/json"}
        sent_ms = int(time.time() * 1000)
        assert s.watch is not None
        for d in items:
            s.watch.expect(d, sent_ms)
        with self.client.post(url, data=body, headers=headers, name=name, catch_response=True, timeout=30) as resp:
            taken, problem = judge(resp.status_code, resp.content, items)
            for i, d in enumerate(items):
                if i in taken:
                    if s.sent is not None:
                        s.sent.record(d)
                else:
                    s.watch.forget(d)
            if problem:
                resp.failure(problem)
            else:
                resp.success()


def judge(status: int, content: bytes, items: list[Delivery]) -> tuple[set[int], str]:
    """Which of ``items`` the API took in (accepted or duplicate) and what went wrong, if anything: a good order
    refused, a payload crafted bad taken, or an answer that says nothing about the orders (401, 503, …)."""
    try:
        payload = orjson.loads(content or b"{}")
    except orjson.JSONDecodeError:
        payload = None
    if not isinstance(payload, dict):
        return set(), f"HTTP {status}: not a JSON object"
    if "results" in payload:  # a batch: one result per order
        results = payload["results"]
    elif "status" in payload:  # one order
        results = [payload]
    elif status in (400, 413, 415, 422) and "error" in payload:  # the whole request refused
        results = [{"status": "rejected", "error": payload["error"], "message": payload.get("message", "")}]
        results *= len(items)
    else:
        return set(), f"HTTP {status}: {payload.get('error', '')} {payload.get('message', '')}"[:300]
    if not isinstance(results, list) or len(results) != len(items):
        return set(), f"HTTP {status}: an answer for {len(results)} of {len(items)} orders"
    taken: set[int] = set()
    problems: list[str] = []
    for position, item in enumerate(results):
        index = item.get("index", position) if len(items) > 1 else 0
        if not 0 <= index < len(items):
            return set(), f"HTTP {status}: result index {index} out of range"
        d = items[index]
        ok = item.get("status") in ("accepted", "duplicate")
        if ok:
            taken.add(index)
        if ok == (d.kind == "bad"):
            what = "took a payload crafted bad" if ok else f"refused an order ({item.get('error')})"
            problems.append(f"{what}: {d.channel.value} {d.platform_id} {item.get('message', '')}"[:300])
    return taken, "; ".join(problems[:3])


class FixedOrderRate(LoadTestShape):
    """All users at once, each on its fixed schedule, for ``--run-time`` (or until stopped): the offered rate
    is ``--orders-per-s`` from the first second to the last. ``-u`` and ``-r`` are not used."""

    use_common_options = True

    def tick(self) -> tuple[int, float, list[type[User]]] | None:
        environment = self.runner.environment if self.runner is not None else None
        run_time = getattr(environment.parsed_options, "run_time", None) if environment else None
        if run_time and self.get_run_time() >= run_time:
            return None
        plan = scenario().plan
        counts: tuple[tuple[type[User], int], ...] = ((KafkaOrders, plan.kafka_users), (HttpOrders, plan.http_users))
        classes = [cls for cls, n in counts if n]
        return plan.users, float(plan.users), classes
