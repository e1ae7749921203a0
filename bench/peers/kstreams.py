"""The reservation saga as a Kafka Streams app: the JVM peer the engine is compared with, on the same broker.

    python -m bench.peers.kstreams --orders 20000 --guarantee exactly_once_v2

``build()`` packages ``bench/peers/kstreams`` (Java 17, Maven) into one jar when its sources changed;
``measure()`` runs it once on fresh topics: stock in, JVM up (not timed), orders in, decisions read back
(read_committed) until every order is decided, then checks one decision per order and no oversold SKU.
The peer does the engine's job minus review: orders → reserve per line keyed ``tenant:sku`` → one writer per
SKU → per-order saga → ACCEPTED, or REJECTED with the reserved lines released.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import IO, Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from bench.report import cleanup_quietly, failure_row
from engine.kafka.admin import CLIENT_LOG, admin, create_topics, delete_topics, wait_for_broker
from workload.generator import Workload, WorkloadSpec

PEER_DIR = Path(__file__).resolve().parent / "kstreams"
JAR = PEER_DIR / "target" / "kstreams-peer.jar"
GUARANTEES = {"exactly_once_v2": "kstreams_eos_v2", "at_least_once": "kstreams_alo"}
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
#: After the last order is decided, keep reading this long (untimed) so a late second decision is still seen.
SETTLE_S = 2.0

OrderDict = dict[str, Any]
StockDict = dict[str, Any]


def _progress(message: str) -> None:
    """Phases on stderr, so a slow step on a shared machine shows where it is; stdout keeps the JSON line."""
    print(f"[kstreams {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def build() -> Path:
    """The runnable jar, rebuilt only when the pom or a source is newer: Maven takes ~10 s even with nothing to do."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"`{tool}` is not on PATH: the Kafka Streams peer needs Java 17 and Maven "
                "(Debian: apt-get install openjdk-17-jdk-headless maven)"
            )
    sources = [PEER_DIR / "pom.xml", *(p for p in (PEER_DIR / "src").rglob("*") if p.is_file())]
    newest = max(p.stat().st_mtime for p in sources)
    if JAR.exists() and JAR.stat().st_mtime >= newest:
        return JAR
    _progress(f"building {JAR.name} with Maven")
    proc = subprocess.run(
        ["mvn", "-q", "-B", "package", "-DskipTests"], cwd=PEER_DIR, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or not JAR.exists():
        output = (proc.stdout + proc.stderr).strip().splitlines()
        raise RuntimeError(f"mvn package failed in {PEER_DIR} (exit {proc.returncode}):\n" + "\n".join(output[-40:]))
    return JAR


def peer_inputs(workload: Workload) -> tuple[list[OrderDict], list[StockDict]]:
    """The workload in the peer's wire shape. Orders keep their redeliveries (the peer must drop them); stock is
    summed per tenant:sku over warehouses, because the peer has one pool per SKU."""
    orders = [
        {
            "order": o.key,
            "tenant": o.tenant,
            "lines": [{"sku": ln.sku, "qty": ln.quantity} for ln in o.lines],
        }
        for o in workload.orders()
    ]
    totals: dict[tuple[str, str], int] = defaultdict(int)
    for r in workload.opening_stock("bench", 0, 0):
        totals[(r.tenant, r.sku)] += r.quantity
    stock = [{"tenant": t, "sku": s, "qty": q} for (t, s), q in totals.items()]
    return orders, stock


def measure(
    bootstrap: str,
    orders: list[OrderDict],
    stock: list[StockDict],
    guarantee: str,
    partitions: int,
    timeout_s: float = 300,
    *,
    threads: int = 1,
    tuning: dict[str, int | str] | None = None,
) -> dict[str, Any]:
    """One timed run on fresh topics. ``tuning`` overrides Kafka Streams' defaults: commit-ms, linger-ms,
    cache-bytes, or any config by its own dotted name."""
    if guarantee not in GUARANTEES:
        raise ValueError(f"guarantee must be one of {sorted(GUARANTEES)}, not {guarantee!r}")
    jar = build()
    prefix = f"bench.ks.{uuid.uuid4().hex[:8]}"
    app_id = f"{prefix}.app"  # under the prefix, so its changelog topics are deleted with the rest
    topic = {name: f"{prefix}.{name}" for name in ("stock", "orders", "decisions")}
    create_topics(bootstrap, topic.values(), partitions)
    try:
        with tempfile.TemporaryDirectory(prefix="oms-kstreams-") as tmp:
            _send(bootstrap, topic["stock"], [(f"{s['tenant']}:{s['sku']}", s) for s in stock])
            _progress(f"{prefix}: {len(stock)} stock records sent; starting the peer ({guarantee})")
            args = ["--bootstrap", bootstrap, "--prefix", prefix, "--app-id", app_id, "--guarantee", guarantee]
            args += ["--threads", str(threads), "--state-dir", str(Path(tmp) / "state")]
            for name, value in (tuning or {}).items():
                args += [f"--{name}", str(value)]
            with _Peer(jar, args, Path(tmp) / "peer.log") as peer:
                peer.wait_ready()
                _progress(f"peer RUNNING; sending {len(orders)} order records")
                cpu_before = peer.cpu_s()
                decisions, elapsed = _run_orders(bootstrap, topic, partitions, orders, peer, timeout_s)
                peer_cpu = peer.cpu_s() - cpu_before  # includes the untimed settle, when the peer is idle
                _progress(f"{len(decisions)} orders decided in {elapsed:.1f}s; stopping the peer")
    finally:  # a clean-up that fails must not hide the run's own error
        _progress(f"deleting {prefix}.*")
        cleanup_quietly(lambda: delete_topics(bootstrap, prefix + "."))
        client = admin(bootstrap)  # held: a collected AdminClient never resolves its futures
        for fut in client.delete_consumer_groups([app_id], request_timeout=10).values():
            with contextlib.suppress(KafkaException, TimeoutError):  # best effort: an empty group expires anyway
                fut.result(timeout=15)
    return _verdict(GUARANTEES[guarantee], orders, stock, decisions, elapsed) | {
        "peer_cpu_s": round(peer_cpu, 2),
        "partitions": partitions,
        "threads": threads,
        **({"tuning": tuning} if tuning else {}),
    }


class _Peer:
    """The JVM: stdout read on a thread for READY, stderr to a log whose tail explains a failure."""

    def __init__(self, jar: Path, args: list[str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("w")
        self.proc = subprocess.Popen(
            ["java", "-Xmx1g", "-jar", str(jar), *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            self._lines.put(line.strip())

    def __enter__(self) -> _Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(queue.Empty):
                if self._lines.get(timeout=0.2) == "READY":
                    return
        raise RuntimeError(f"the Kafka Streams peer was not RUNNING within {READY_TIMEOUT_S:.0f}s:\n{self.tail()}")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the Kafka Streams peer exited with {self.proc.returncode}:\n{self.tail()}")

    def cpu_s(self) -> float:
        """The JVM's CPU seconds so far: on a shared 2-core machine, elapsed time alone does not say who waited."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def tail(self, lines: int = 30) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM lets Kafka Streams close (commit, release its tasks); kill only if that hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def _producer(bootstrap: str) -> Producer:
    # murmur2_random is the Java client's partitioner, so a key lands where Kafka Streams will send the same key.
    return Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5, "logger": CLIENT_LOG}
    )


def _send(bootstrap: str, topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    """Produce and flush; a record the broker refused fails the run rather than skewing it."""
    producer = _producer(bootstrap)
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for n, (key, value) in enumerate(records):
        producer.produce(topic, json.dumps(value, ensure_ascii=False).encode(), key.encode(), on_delivery=delivered)
        if n % 1000 == 0:
            producer.poll(0)
    producer.flush(60)
    if failed or len(producer):
        raise RuntimeError(f"{len(failed) + len(producer)} records to {topic} not delivered: {failed[:3]}")


def _run_orders(
    bootstrap: str,
    topic: dict[str, str],
    partitions: int,
    orders: list[OrderDict],
    peer: _Peer,
    timeout_s: float,
) -> tuple[dict[str, list[dict[str, Any]]], float]:
    """Send the orders and read decisions until each order has one; returns every decision record per order key
    and the seconds from the first order sent to the last order decided."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic['decisions']}.reader",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",  # only what the peer committed counts as decided
            "logger": CLIENT_LOG,
        }
    )
    consumer.assign([TopicPartition(topic["decisions"], p, OFFSET_BEGINNING) for p in range(partitions)])
    pending = {o["order"] for o in orders}
    decisions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        start = time.monotonic()
        last = start
        _send(bootstrap, topic["orders"], [(o["order"], o) for o in orders])
        deadline = start + timeout_s
        settle_until = float("inf")
        while time.monotonic() < min(deadline, settle_until):
            for msg in consumer.consume(1000, timeout=0.2):
                if msg.error():
                    raise RuntimeError(f"reading {topic['decisions']}: {msg.error()}")
                key = (msg.key() or b"").decode()
                if key not in decisions:
                    last = time.monotonic()
                    pending.discard(key)
                decisions[key].append(json.loads(msg.value() or b"null"))
            if not pending and settle_until == float("inf"):
                settle_until = time.monotonic() + SETTLE_S
            peer.check_alive()
    finally:
        consumer.close()
    return decisions, last - start


def _verdict(
    what: str,
    orders: list[OrderDict],
    stock: list[StockDict],
    decisions: dict[str, list[dict[str, Any]]],
    elapsed: float,
) -> dict[str, Any]:
    """One distinct decision per order, none for an unknown order, and no SKU with more accepted than stocked."""
    by_key = {o["order"]: o for o in orders}
    violations: list[str] = []
    duplicates = 0
    accepted: list[str] = []
    for key, records in decisions.items():
        statuses = {r.get("status") if isinstance(r, dict) else None for r in records}
        duplicates += len(records) - 1
        if key not in by_key:
            violations.append(f"decision for unknown order {key!r}: {sorted(map(str, statuses))}")
        elif len(statuses) > 1:
            violations.append(f"order {key} decided {len(records)} times: {sorted(map(str, statuses))}")
        elif not statuses <= {"ACCEPTED", "REJECTED"} or any(r.get("order") != key for r in records):
            violations.append(f"order {key}: malformed decision {records[0]!r}")
        elif statuses == {"ACCEPTED"}:
            accepted.append(key)
    undecided = by_key.keys() - decisions.keys()
    if undecided:
        violations.append(f"{len(undecided)} orders undecided, e.g. {sorted(undecided)[:3]}")

    stocked: dict[str, int] = defaultdict(int)
    for s in stock:
        stocked[f"{s['tenant']}:{s['sku']}"] += s["qty"]
    sold: dict[str, int] = defaultdict(int)
    for key in accepted:
        for line in by_key[key]["lines"]:
            sold[f"{by_key[key]['tenant']}:{line['sku']}"] += line["qty"]
    oversold = {sku: n - stocked[sku] for sku, n in sold.items() if n > stocked[sku]}
    if oversold:
        worst = sorted(oversold.items(), key=lambda kv: -kv[1])[:3]
        violations.append(f"{len(oversold)} SKUs oversold by {sum(oversold.values())} units, e.g. {worst}")

    decided = len(decisions.keys() & by_key.keys())
    return {
        "what": what,
        "orders": len(by_key),
        "records_sent": len(orders),
        "decided": decided,
        "accepted": len(accepted),
        "elapsed_s": round(elapsed, 3),
        "orders_per_s": round(decided / elapsed, 1) if elapsed > 0 else None,
        "violations": violations[:5],
        "violation_count": len(violations),
        "oversold_units": sum(oversold.values()),
        "duplicate_records": duplicates,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the peer once on its own and print the result as one JSON line; exit 1 on a violation."""
    p = argparse.ArgumentParser(prog="python -m bench.peers.kstreams", description=__doc__.splitlines()[0])
    p.add_argument("--orders", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--guarantee", choices=sorted(GUARANTEES), default="exactly_once_v2")
    p.add_argument("--partitions", type=int, default=int(os.environ.get("OMS_PARTITIONS", "8")))
    p.add_argument("--threads", type=int, default=1, help="Kafka Streams stream threads")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every decision")
    p.add_argument("--commit-ms", type=int, help="commit.interval.ms (default: Kafka Streams', 100 under EOS)")
    p.add_argument("--linger-ms", type=int, help="producer linger.ms (default: Kafka Streams' 100)")
    p.add_argument("--cache-bytes", type=int, help="statestore.cache.max.bytes (default: Kafka Streams' 10 MiB)")
    p.add_argument(
        "--config", action="append", default=[], metavar="NAME=VALUE", help="any Kafka Streams config (repeatable)"
    )
    a = p.parse_args(argv)

    bootstrap = os.environ.get("OMS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    wait_for_broker(bootstrap, timeout_s=15)
    orders, stock = peer_inputs(Workload(WorkloadSpec(orders=a.orders, seed=a.seed)))
    tuning: dict[str, int | str] = {
        name: value
        for name, value in (("commit-ms", a.commit_ms), ("linger-ms", a.linger_ms), ("cache-bytes", a.cache_bytes))
        if value is not None
    }
    for item in a.config:
        name, sep, value = item.partition("=")
        if not sep or "." not in name:
            p.error(f"--config wants a Kafka config NAME=VALUE, got {item!r}")
        tuning[name] = value
    try:
        result = measure(
            bootstrap, orders, stock, a.guarantee, a.partitions, a.timeout, threads=a.threads, tuning=tuning
        )
    except Exception as exc:  # one JSON line with the error (the peer's log tail is in its message), exit 2
        print(json.dumps(failure_row({"what": f"kstreams_{a.guarantee}"}, exc), ensure_ascii=False))
        return 2
    print(json.dumps(result, ensure_ascii=False))
    return 1 if result["violation_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
