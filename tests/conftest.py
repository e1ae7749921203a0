"""Shared fixtures. Pipeline tests run against a real Kafka broker, Redis server and PostgreSQL that the project's
own ``engine.local`` starts on test ports (so a developer's running instance is never touched).

The servers are started once per test run, however many processes run the tests (``./oms test`` runs them in
parallel with pytest-xdist): the first process whose tests need them starts them, under a file lock in the run's
own directory, and records what it started there; the others find them answering. The process that made the run
directory (pytest's own, or xdist's controller) stops what was recorded once every test process is gone."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.servers import LocalServers
from engine.settings import Settings
from workload.delivery import Credentials

TEST_PORTS = {"local_kafka_port": 29092, "local_controller_port": 29093, "local_redis_port": 26379}
TEST_POSTGRES_URL = "postgresql://oms@127.0.0.1:25432/oms"
RUN_DIR_ENV = "OMS_TEST_RUN_DIR"  # set by the process that owns the run; xdist's workers inherit it
WEB_PORT_STRIDE = 10  # xdist worker gwN: web ports from OMS_TEST_WEB_PORT + N * 10 (a test uses web_port + 0…3)
_RUN_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):  # an xdist worker: its controller made the run directory
        return
    run = Path(tempfile.mkdtemp(prefix="oms-test-run-"))
    config.stash[_RUN_DIR] = run
    os.environ[RUN_DIR_ENV] = str(run)


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN_DIR, None)
    if run is None:
        return
    try:
        record = run / "servers.json"
        if record.exists():
            info = json.loads(record.read_text())
            local = LocalServers(_base_settings(Path(info["state"])))
            local.started = list(info.get("started", []))
            local.stop(only_started=True)
            if info.get("remove"):
                shutil.rmtree(info["state"], ignore_errors=True)
    finally:
        shutil.rmtree(run, ignore_errors=True)
        if os.environ.get(RUN_DIR_ENV) == str(run):
            del os.environ[RUN_DIR_ENV]


def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bool]:
    """Where the session's servers keep their data, and whether to remove it at the end. As root the local
    PostgreSQL runs as the ``postgres`` user, which must traverse the directories above its data: pytest's own
    temporary directories are closed to other users (and any pytest session that starts closes them again, which
    would cut a running server off from its files), so the servers get a directory of their own under the system
    temporary directory instead."""
    if os.environ.get("OMS_TEST_STATE_DIR"):
        return Path(os.environ["OMS_TEST_STATE_DIR"]), False
    if os.geteuid() != 0:
        return tmp_path_factory.mktemp("oms-state"), False
    state = Path(tempfile.mkdtemp(prefix="oms-test-state-"))
    state.chmod(0o711)
    return state, True


def _base_settings(state: Path) -> Settings:
    """The settings every test starts from: the test ports, the state directory ``state``."""
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL", "OMS_POSTGRES_URL")}
    pg = os.environ.get("OMS_TEST_POSTGRES_URL") or TEST_POSTGRES_URL
    base = Settings.from_env(env, state_dir=str(state), postgres_url=pg, **TEST_PORTS)
    if os.environ.get("OMS_TEST_KAFKA_BOOTSTRAP"):  # run the pipeline tests against a cluster you already have
        base = base.with_(kafka_bootstrap=os.environ["OMS_TEST_KAFKA_BOOTSTRAP"])
    return base


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Kafka + Redis + PostgreSQL for the whole run (shared by every test process); the base settings pointing at
    them. Started by the first process that needs them, stopped when the run ends (pytest_unconfigure)."""
    run = Path(os.environ.get(RUN_DIR_ENV) or tmp_path_factory.mktemp("oms-run"))  # unset: configured without us
    record = run / "servers.json"
    with _locked(run / "servers.lock"):
        if record.exists():
            info = json.loads(record.read_text())
            if info.get("failed"):
                pytest.fail(f"the test servers could not be started (by another test process): {info['failed']}")
            return _base_settings(Path(info["state"]))
        state, remove = _state_dir(tmp_path_factory)
        base = _base_settings(state)
        local = LocalServers(base)
        info = {"state": str(state), "remove": remove, "started": []}
        try:
            local.start(echo=lambda m: print(m))
        except BaseException as exc:
            info["failed"] = f"{type(exc).__name__}: {exc}"
            if remove:  # a directory of this run's own: whatever runs from it was started here, and is of no use
                local.stop(only_started=False)
            raise
        finally:
            record.write_text(json.dumps({**info, "started": local.started}))
    return base


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """API tokens and Shopify webhook secrets for the tenants the tests use."""
    return Credentials.create(["acme", "blue"], tmp_path_factory.mktemp("tenants"))


def web_port() -> int:
    """The first web port of this test process: OMS_TEST_WEB_PORT, plus a range of its own per xdist worker."""
    base = int(os.environ.get("OMS_TEST_WEB_PORT", "26066"))
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", … (unset: not under xdist)
    return base + WEB_PORT_STRIDE * (int(worker[2:]) if worker[2:].isdigit() else 0)


@pytest.fixture
def settings(servers: Settings, credentials: Credentials, tmp_path: Path) -> Settings:
    """A fresh namespace per test: its own topics, consumer group, tables and web ports; no review rules
    unless a test publishes some."""
    run = uuid.uuid4().hex[:8]
    no_rules = tmp_path / "rules.toml"
    no_rules.write_text("")
    return servers.with_(
        tenants_file=str(credentials.path),
        rules_file=str(no_rules),
        topic_prefix=f"t{run}",
        app_id=f"oms-t{run}",
        partitions=4,
        session_timeout_s=8.0,
        web_port=web_port(),
        log_level=os.environ.get("OMS_LOG_LEVEL", "warning"),
        pickup_secret=secrets.token_hex(16),  # pickup codes nobody could compute offline (there is no default)
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The pipeline tests first: they are long and mostly wait, so in a parallel run (``./oms test``) they start
    early, and the short unit tests fill the test processes that are left idle at the end."""
    items.sort(key=lambda item: item.path.parent.name != "pipeline")  # stable: otherwise in collection order
