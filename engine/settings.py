"""Settings from the environment (12-factor). Every knob has a sane default for a laptop or CI box.

``Settings.from_env()`` is the only place that reads ``os.environ`` for the engine; the README's
configuration table is generated from ``FIELDS`` (``oms config``), so docs and code cannot drift.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable."""


def _default_state_dir() -> str:
    return str(REPO_ROOT / ".oms")


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "oms")


def setting(env: str, doc: str, default: Any = None, *, factory: Any = None) -> Any:
    """A settings field read from the environment variable ``env``."""
    meta = {"env": env, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str | None = setting(
        "KAFKA_BOOTSTRAP", "Kafka bootstrap servers. Unset: start and use the local broker.", None
    )
    redis_url: str | None = setting("REDIS_URL", "Redis URL. Unset: start and use the local redis-server.", None)
    postgres_url: str = setting(
        "OMS_POSTGRES_URL",
        "PostgreSQL the voucher sink writes the books to. On 127.0.0.1 or localhost, the job and the tests start "
        "a local server on its port (unless one answers there) with its user and database; not 5432, which a "
        "system cluster may hold.",
        "postgresql://oms@127.0.0.1:15432/oms",
    )
    partitions: int = setting(
        "OMS_PARTITIONS",
        "Partitions of every topic: the maximum parallelism. Choose once; changing it remaps SKUs.",
        8,
    )
    replication_factor: int = setting("OMS_REPLICATION_FACTOR", "Replication factor of created topics.", 1)
    app_id: str = setting(
        "OMS_APP_ID", "Application id: the consumer group, the prefix of changelogs and transactional ids.", "oms"
    )
    topic_prefix: str = setting("OMS_TOPIC_PREFIX", "Prefix of every topic name.", "oms")
    table_store: str = setting(
        "OMS_TABLE_STORE",
        "Table store: `rocksdb://` (durable local state, kept across restarts) or `memory://` (restored at start).",
        "rocksdb://",
    )
    app_module: str = setting(
        "OMS_APP",
        "Import path of the function that builds the Faust app with its stages.",
        "agents.pipeline:create_app",
    )
    saga_stuck_s: float = setting(
        "OMS_SAGA_STUCK_S",
        "A saga still waiting for a stock answer after this many seconds is reported as stuck (never decided by "
        "the clock: an answer is late, not lost).",
        300.0,
    )
    fulfilment_tick_s: float = setting(
        "OMS_FULFILMENT_TICK_S",
        "How often each fulfilment partition gets a tick record (its clock when no order arrives): the "
        "resolution of merge windows and wave timers.",
        1.0,
    )
    aftersales_tick_s: float = setting(
        "OMS_AFTERSALES_TICK_S",
        "How often each aftersales partition gets a tick record: the resolution of store pickup deadlines.",
        5.0,
    )
    pickup_hold_s: int = setting(
        "OMS_PICKUP_HOLD_S",
        "A store pickup (门店自提) not claimed this long (record time) after it is ready is cancelled and its "
        "stock released.",
        3 * 86400,
    )
    pickup_secret: str | None = setting(
        "OMS_PICKUP_SECRET",
        "The key store pickup codes are derived from (a keyed digest of the order), at least 16 characters; "
        "changing it changes the codes of pickups already announced. Unset: no pickup codes are issued (a pickup "
        "can only expire) and the pickup API answers 503. The main job and the tests set a random one.",
        None,
    )
    writeback_fail_every: int = setting(
        "OMS_WRITEBACK_FAIL_EVERY",
        "The simulated platforms (main job, tests) refuse every n-th write-back call; 0: never.",
        0,
    )
    carrier_fail_every: int = setting(
        "OMS_CARRIER_FAIL_EVERY",
        "The simulated carrier (main job, tests) refuses every n-th call of a carrier as unavailable; 0: never.",
        0,
    )
    carrier_timeout_every: int = setting(
        "OMS_CARRIER_TIMEOUT_EVERY",
        "The simulated carrier issues the numbers of every n-th call and then loses its answer; 0: never.",
        0,
    )
    carrier_range: int = setting(
        "OMS_CARRIER_RANGE",
        "Waybill numbers the simulated carrier has per carrier and warehouse before it runs out.",
        1_000_000,
    )
    order_retention_s: int = setting(
        "OMS_ORDER_RETENTION_S",
        "Order-side state is forgotten this long after the order's last channel update once it is decided "
        "(channel time); a later update for it is dead-lettered (forgotten_order), not taken for a new order.",
        7 * 86400,
    )
    ledger_retention_s: int = setting(
        "OMS_LEDGER_RETENTION_S",
        "The ledger keeps an order's books (what was sold and billed, its open receivable) this long after its last "
        "business event (record time): returns and settlement lines must come within it.",
        120 * 86400,
    )
    line_retention_s: int = setting(
        "OMS_LINE_RETENTION_S",
        "The stock side forgets a released or shipped line, and an idle idempotency origin, this long after "
        "(command time).",
        7 * 86400,
    )
    transaction_timeout_s: float = setting(
        "OMS_TRANSACTION_TIMEOUT_S",
        "Kafka transaction timeout: the longest a vanished worker's open transaction can hold readers back.",
        60.0,
    )
    batch_max: int = setting("OMS_BATCH_MAX", "Most records a worker takes into one batch (one transaction).", 5000)
    batch_within_s: float = setting(
        "OMS_BATCH_WITHIN_S",
        "Longest a worker waits, after the first record of a batch, for more to fill it (seconds). A batch is one "
        "transaction; under load batches fill while the previous one commits, so this matters only when records "
        "trickle in: it trades latency per hop for fewer transactions (see BENCHMARKS.md).",
        0.005,
    )
    session_timeout_s: float = setting(
        "OMS_SESSION_TIMEOUT_S",
        "Consumer session timeout: how long the partitions of a worker that died (or paused) wait for it before they "
        "move to the others. A worker started again with the same index takes them back at once (static "
        "membership); one stopped with SIGTERM leaves the group and hands them over at once.",
        30.0,
    )
    views: int = setting(
        "OMS_VIEWS",
        "1: every worker runs a projector (its own consumer group) that keeps the query API's read models in Redis "
        "— orders, shipments, waybills, available to promise — from the result topics; 0: none (the API's GETs "
        "then answer from whatever an earlier run or `oms views rebuild` left).",
        1,
    )
    stock_sync_tick_s: float = setting(
        "OMS_STOCK_SYNC_TICK_S",
        "How often a stock-sync partition where an update waits (coalesced, or backing off after a refusal) gets "
        "a tick record: the resolution of `every_ms` in the stock-sync rules.",
        1.0,
    )
    platform_url: str | None = setting(
        "OMS_PLATFORM_URL",
        "Base URL of the platforms' open APIs the stock-sync gateway calls (each request in its platform's shape). "
        "Unset: no gateway sends stock updates (they stay in the outbox topic for another sender); the main job "
        "and the tests start a simulated platform server and set it.",
        None,
    )
    pull_since_s: int = setting(
        "OMS_PULL_SINCE_S",
        "Order pulling: how far back a shop's first window reaches (it has no checkpoint yet), in seconds.",
        86_400,
    )
    pull_overlap_s: int = setting(
        "OMS_PULL_OVERLAP_S",
        "Order pulling: each window starts this long before the last one ended (orders the platform wrote late).",
        30,
    )
    pull_lag_s: float = setting(
        "OMS_PULL_LAG_S",
        "Order pulling: a window ends this long before now (the platform's list trails its own writes).",
        1.0,
    )
    pull_page_size: int = setting("OMS_PULL_PAGE_SIZE", "Order pulling: orders per page of a list call.", 50)
    pull_calls_per_s: float = setting(
        "OMS_PULL_CALLS_PER_S", "Order pulling: at most this many list calls per shop and second.", 10.0
    )
    standby_replicas: int = setting(
        "OMS_STANDBY_REPLICAS",
        "1: every worker keeps a warm copy of the table partitions it does not own (it follows their changelogs "
        "every `OMS_STANDBY_INTERVAL_S`), so that taking over a partition whose worker is gone for good restores "
        "only the last moments. 0: a takeover restores the partition from its changelog (or from the worker's own "
        "copy on disk, when the partition comes back to it).",
        0,
    )
    standby_interval_s: float = setting(
        "OMS_STANDBY_INTERVAL_S",
        "How often a worker with standby copies (`OMS_STANDBY_REPLICAS=1`) catches them up with their changelogs.",
        2.0,
    )
    workers: int = setting("OMS_WORKERS", "Worker processes the main job starts (at least 2).", 2)
    web_port: int = setting("OMS_WEB_PORT", "First worker's web port; worker i listens on web_port + i.", 6066)
    web_bind: str = setting(
        "OMS_WEB_BIND",
        "Address the workers' web server (API, readiness) binds to; 0.0.0.0 to serve other hosts.",
        "127.0.0.1",
    )
    state_dir: str = setting(
        "OMS_STATE_DIR",
        "Local servers' data and logs, worker data dirs (default `./.oms`).",
        factory=_default_state_dir,
    )
    cache_dir: str = setting(
        "OMS_CACHE_DIR", "Cache of resolved Kafka jars (default `~/.cache/oms`).", factory=_default_cache_dir
    )
    kafka_version: str = setting("OMS_KAFKA_VERSION", "Apache Kafka version of the local broker.", "4.1.2")
    local_kafka_port: int = setting("OMS_LOCAL_KAFKA_PORT", "Local broker port (127.0.0.1 only).", 9092)
    local_controller_port: int = setting(
        "OMS_LOCAL_CONTROLLER_PORT", "Local KRaft controller port (127.0.0.1 only).", 9093
    )
    local_redis_port: int = setting("OMS_LOCAL_REDIS_PORT", "Local redis-server port (127.0.0.1 only).", 6379)
    kafka_heap: str = setting("OMS_KAFKA_HEAP", "Local broker JVM heap (-Xmx).", "768m")
    log_level: str = setting("OMS_LOG_LEVEL", "Worker log level.", "warning")
    tenants_file: str | None = setting(
        "OMS_TENANTS_FILE",
        "TOML file of tenants: API token digests, Shopify shops and webhook secrets. Unset: the API answers 503.",
        None,
    )
    layout_file: str | None = setting(
        "OMS_LAYOUT_FILE",
        "TOML file of warehouse layouts per tenant (warehouses, regions, carriers, zones, bins, allocation, merge "
        "and wave policies; see `deploy/layout.toml`), published into the log by `oms run`. Unset: `oms run` "
        "generates one per tenant.",
        None,
    )
    rules_file: str = setting(
        "OMS_RULES_FILE",
        "TOML file of review rules per tenant, published into the log by `oms run` and `oms rules publish` "
        "(default `deploy/rules.toml`); updatable at run time with `PUT /api/v1/{tenant}/rules`.",
        factory=lambda: str(REPO_ROOT / "deploy" / "rules.toml"),
    )
    max_payload_bytes: int = setting(
        "OMS_MAX_PAYLOAD_BYTES", "Largest request body or raw channel record accepted (bytes).", 1_048_576
    )
    idempotency_ttl_s: int = setting(
        "OMS_IDEMPOTENCY_TTL_S",
        "How long the API remembers a delivery it produced (Redis keys), in seconds.",
        7 * 86400,
    )

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(name, raw, f.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def validate(self) -> None:
        def need(ok: bool, var: str, why: str) -> None:
            if not ok:
                raise SettingsError(f"{var}: {why}")

        need(self.partitions >= 1, "OMS_PARTITIONS", "must be at least 1")
        need(self.replication_factor >= 1, "OMS_REPLICATION_FACTOR", "must be at least 1")
        need(self.saga_stuck_s > 0, "OMS_SAGA_STUCK_S", "must be positive")
        need(self.order_retention_s >= 60, "OMS_ORDER_RETENTION_S", "must be at least 60 seconds")
        need(self.pickup_hold_s >= 1, "OMS_PICKUP_HOLD_S", "must be at least 1 second")
        need(self.aftersales_tick_s > 0, "OMS_AFTERSALES_TICK_S", "must be positive")
        need(self.pickup_secret is None or len(self.pickup_secret) >= 16, "OMS_PICKUP_SECRET", "16 characters or more")
        need(self.line_retention_s >= 60, "OMS_LINE_RETENTION_S", "must be at least 60 seconds")
        need(self.ledger_retention_s >= 86400, "OMS_LEDGER_RETENTION_S", "must be at least a day")
        need(self.transaction_timeout_s >= 5, "OMS_TRANSACTION_TIMEOUT_S", "must be at least 5 seconds")
        need(self.batch_max >= 1, "OMS_BATCH_MAX", "must be at least 1")
        need(self.batch_within_s > 0, "OMS_BATCH_WITHIN_S", "must be positive")
        need(self.standby_replicas in (0, 1), "OMS_STANDBY_REPLICAS", "0 or 1")
        need(self.views in (0, 1), "OMS_VIEWS", "0 or 1")
        need(1 <= self.pull_page_size <= 100, "OMS_PULL_PAGE_SIZE", "from 1 to 100")
        need(self.pull_calls_per_s > 0, "OMS_PULL_CALLS_PER_S", "must be positive")
        need(self.standby_interval_s > 0, "OMS_STANDBY_INTERVAL_S", "must be positive")
        need(self.session_timeout_s >= 6, "OMS_SESSION_TIMEOUT_S", "must be at least 6 seconds")
        need(self.workers >= 1, "OMS_WORKERS", "must be at least 1")
        need(
            self.table_store.split("://")[0] in ("rocksdb", "memory"),
            "OMS_TABLE_STORE",
            "rocksdb:// or memory://",
        )
        need(":" in self.app_module, "OMS_APP", "must look like package.module:function")
        need(self.max_payload_bytes >= 1024, "OMS_MAX_PAYLOAD_BYTES", "must be at least 1024")
        try:
            pg = urlsplit(self.postgres_url)
            pg_ok = pg.scheme in ("postgresql", "postgres") and bool(pg.hostname) and pg.port != 0
        except ValueError:  # a port that is not a number
            pg_ok = False
        need(pg_ok, "OMS_POSTGRES_URL", "must look like postgresql://user@host:port/database")
        for name in ("app_id", "topic_prefix"):
            value = getattr(self, name)
            need(
                bool(value) and all(c.isalnum() or c in "._-" for c in value),
                "OMS_APP_ID" if name == "app_id" else "OMS_TOPIC_PREFIX",
                "letters, digits, '.', '_' and '-' only",
            )

    @property
    def uses_local_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def uses_local_redis(self) -> bool:
        return not self.redis_url

    @property
    def uses_local_postgres(self) -> bool:
        return urlsplit(self.postgres_url).hostname in ("127.0.0.1", "localhost")

    @property
    def local_postgres_port(self) -> int:
        return urlsplit(self.postgres_url).port or 5432

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"127.0.0.1:{self.local_kafka_port}"

    @property
    def redis(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.local_redis_port}/0"

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata["env"]] = str(value)
        return out


def _parse(name: str, raw: str, typ: Any) -> Any:
    typ = str(typ)
    try:
        if typ.startswith("int"):
            return int(raw)
        if typ.startswith("float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: expected a {typ.split()[0]}") from None
    return raw


def config_table() -> str:
    """Markdown table of every setting, for the README."""
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        if f.default_factory is not MISSING:
            shown = "see meaning"
        else:
            shown = "unset" if f.default is None else f"`{f.default}`"
        rows.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(rows)
