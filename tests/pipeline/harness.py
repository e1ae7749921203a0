"""Drive the real pipeline from a test: topics, stock, workers, orders — and the inputs, recorded as they are
sent, that the invariants are then checked against."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.kafka.admin import admin, create_topics, delete_topics
from engine.kafka.clients import Sender, read_topics
from engine.settings import Settings
from engine.supervisor import WorkerPool
from engine.topics import Topics
from invariants import Inputs, Outputs, Verdict, check, collect
from schemas import wire
from schemas.inventory import InventoryCommand
from schemas.order import Order
from schemas.saga import OrderDecision
from schemas.shipping import CarrierEvent
from workload.day import engine_inputs, wait_idle
from workload.generator import Workload
from workload.stock import load_stock, send_orders

COUNTERS = ("admitted", "transactions", "dead_letters", "fenced", "aborted", "stale", "notes", "gauges")


@dataclass
class Pipeline:
    settings: Settings
    topics: Topics = field(init=False)
    pools: list[WorkerPool] = field(default_factory=list)
    inputs: Inputs = field(default_factory=Inputs)
    own_servers: dict[str, Any] = field(default_factory=dict)  # servers of the test's own, by name (conftest)

    def __post_init__(self) -> None:
        self.topics = Topics(self.settings.topic_prefix)
        self.inputs.order_retention_ms = self.settings.order_retention_s * 1000
        create_topics(
            self.settings.bootstrap, self.topics.all(), self.settings.partitions, configs=self.topics.configs()
        )

    @property
    def bootstrap(self) -> str:
        return self.settings.bootstrap

    def start_workers(
        self,
        count: int = 2,
        topics: list[str] | None = None,
        env: dict[int, dict[str, str]] | None = None,
        **overrides: object,
    ) -> WorkerPool:
        pool = WorkerPool(self.settings.with_(**overrides) if overrides else self.settings, count, env)
        pool.start()
        self.pools.append(pool)
        pool.wait_ready(topics or [self.topics.order_inbox, self.topics.inventory_commands])
        return pool

    # -- inputs (recorded as sent) -------------------------------------------------------------------------
    def load(self, workload: Workload) -> int:
        stock = list(workload.opening_stock("stock-loader", 0, int(time.time() * 1000)))
        self.inputs.add_stock(stock)
        return load_stock(self.bootstrap, self.topics, self.settings.partitions, stock, app_id=self.settings.app_id)

    def send_orders(self, orders: list[Order]) -> None:
        self.inputs.add_orders(orders)
        send_orders(self.bootstrap, self.topics, orders)

    def send_commands(self, commands: Iterable[InventoryCommand]) -> None:
        """Stock commands exactly as given (origin and sequence included)."""
        commands = list(commands)
        self.inputs.add_stock(commands)
        self.send(self.topics.inventory_commands, commands)

    def send_carrier_events(self, events: list[CarrierEvent]) -> None:
        """Carriers' tracking events, by topic (as a carrier integration writes them)."""
        self.inputs.carrier_events.extend(events)
        self.send(self.topics.tracking_inbox, events)

    def send_bad(self, topic: str, key: str | bytes, raw: bytes, partition: int | None = None) -> None:
        """A record crafted to be bad: the invariants expect it dead-lettered."""
        self.inputs.bad_records.add(raw)
        sender = Sender(self.bootstrap)
        sender.send(topic, key, raw, partition=partition)
        sender.flush()

    def send(self, topic: str, records: Iterable, key: str | bytes | None = None) -> None:
        sender = Sender(self.bootstrap)
        for record in records:
            raw = record if isinstance(record, bytes) else wire.encode(record)
            sender.send(topic, key if key is not None or isinstance(record, bytes) else record.key, raw)
        sender.flush()

    # -- outputs -------------------------------------------------------------------------------------------
    def api(self, path: str, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.settings.web_port + index}{path}"

    def publish_catalog(self, catalog: dict[str, set[str]]) -> None:
        from engine.readmodels.catalog import publish
        from engine.readmodels.redis import Keys

        publish(self.settings.redis, Keys(self.settings.topic_prefix), catalog)

    def read(self, topic: str, typ: object) -> list:
        return [wire.decode(m.value, typ) for m in read_topics(self.bootstrap, [topic])]

    def decisions(self) -> dict[str, OrderDecision]:
        out: dict[str, OrderDecision] = {}
        for msg in read_topics(self.bootstrap, [self.topics.order_decisions]):
            d = wire.decode(msg.value, OrderDecision)
            out.setdefault(d.key, d)
        return out

    def wait_decisions(
        self, expected: int, timeout_s: float = 240.0, pool: WorkerPool | None = None, restart: bool = True
    ) -> int:
        """Until ``expected`` orders are decided; workers that die meanwhile are started again (``restart``)."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            seen = len(self.decisions())
            if seen >= expected:
                return seen
            for p in ([pool] if pool else self.pools) if restart else []:
                p.supervise()
            time.sleep(1.0)
        self.dump_logs()
        raise AssertionError(f"only {seen}/{expected} orders decided within {timeout_s}s")

    def wait_idle(self, timeout_s: float = 180.0, restart: bool = True) -> None:
        try:
            pool = self.pools[-1] if self.pools and restart else None
            wait_idle(self.settings, engine_inputs(self.topics), pool, timeout_s)
        except Exception:
            self.dump_logs()
            raise

    def dump_logs(self, lines: int = 60) -> None:
        """Every worker's log tail and stage counters; then, from each live worker, where its threads and
        asyncio tasks wait (SIGUSR1 makes it log their stacks), cut to the frames of this project's code."""
        sizes: dict[tuple[int, int], int] = {}
        for n, pool in enumerate(self.pools):
            for i in range(pool.count):
                print(f"--- worker {i} of {pool.settings.app_module} (alive={pool.alive(i)}) ---")
                print(pool.log_tail(i, lines))
                stats = (pool.stats(i) or {}).get("stages", {})
                counters = {name: {k: v for k, v in st.items() if k in COUNTERS} for name, st in stats.items()}
                print("stage counters:", json.dumps(counters))
                with contextlib.suppress(OSError):
                    sizes[(n, i)] = pool.log_path(i).stat().st_size
        if not any(pool.signal_all(signal.SIGUSR1) for pool in self.pools):
            return
        time.sleep(2.0)
        for (n, i), size in sizes.items():
            pool = self.pools[n]
            if not pool.alive(i):
                continue
            with open(pool.log_path(i), "rb") as log:
                log.seek(size)
                dump = log.read().decode(errors="replace").splitlines()
            ours = [
                ln
                for ln in dump
                if ln.lstrip().startswith(("TASK", "File")) and ("/engine/" in ln or "/agents/" in ln or "TASK" in ln)
            ]
            print(f"--- where worker {i} of {pool.settings.app_module} waits ---")
            print("\n".join(ours[-80:]))

    def outputs(self) -> Outputs:
        return collect(self.bootstrap, self.topics)

    def verdict(self, restart: bool = True) -> Verdict:
        """The invariants from the result topics, against the inputs as sent, once the pipeline is idle."""
        self.wait_idle(restart=restart)
        return check(self.inputs, self.outputs(), self.settings.partitions)

    def history(self, needles: Iterable[str], limit: int = 400) -> list[str]:
        """Every record (all topics, in partition order) whose key or value names one of ``needles``: what a
        failed check prints, so that a failure seen once in CI can be understood from its log."""
        wanted = [n.encode() for n in needles]
        found: list[str] = []
        if not wanted:
            return found
        existing = admin(self.bootstrap, quiet=True).list_topics(timeout=10).topics
        changelogs = sorted(
            t for t in existing if t.startswith(self.settings.app_id + "-") and t.endswith("-changelog")
        )
        for m in read_topics(self.bootstrap, [*self.topics.all(), *changelogs]):
            raw = (m.key or b"") + b" " + (m.value or b"")
            if any(n in raw for n in wanted):
                found.append(f"{m.topic}/{m.partition}@{m.offset} key={m.key!r} {(m.value or b'')[:600]!r}")
                if len(found) >= limit:
                    break
        return found

    def explain(self, verdict: Verdict) -> str:
        """The violations, then the history of each order they name."""
        orders = sorted({o for v in verdict.violations for o in re.findall(r"[a-z]+:([\w-]+-\d{8,}\w*)", v)})
        lines = [*verdict.violations[:20], f"--- history of {orders[:5]} ---", *self.history(orders[:5])]
        return "\n".join(lines)

    def stats(self, pool: WorkerPool, index: int, stage: str) -> dict:
        found = pool.stats(index) or {}
        return found.get("stages", {}).get(stage, {})

    def close(self) -> None:
        for pool in self.pools:
            pool.stop(timeout_s=20)
        delete_topics(self.bootstrap, self.settings.topic_prefix + ".")
        delete_topics(self.bootstrap, self.settings.app_id + "-")


def fault_report(path: Path, timeout_s: float = 120.0) -> dict:
    """The report a fault injection writes just before it fires (engine.runtime.faults)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"the fault never fired (no report at {path})")
        time.sleep(0.2)
    time.sleep(0.2)
    return json.loads(path.read_text())


def http(method: str, url: str, body: bytes | dict | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """A small HTTP client for the API tests (stdlib only)."""
    import json as _json
    import urllib.error
    import urllib.request

    data = _json.dumps(body).encode() if isinstance(body, dict | list) else body
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, _json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, _json.loads(raw or b"{}")
        except ValueError:
            return exc.code, {"raw": raw.decode(errors="replace")}


def wait_for(predicate: Any, timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")
