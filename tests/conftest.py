"""Shared fixtures. Pipeline tests run against a real Kafka broker, Redis server and PostgreSQL that the project's
own ``engine.local`` starts on test ports (so a developer's running instance is never touched)."""

from __future__ import annotations

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


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Kafka + Redis + PostgreSQL for the whole session; yields the base settings pointing at them."""
    state, remove = _state_dir(tmp_path_factory)
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "REDIS_URL", "OMS_POSTGRES_URL")}
    pg = os.environ.get("OMS_TEST_POSTGRES_URL") or TEST_POSTGRES_URL
    base = Settings.from_env(env, state_dir=str(state), postgres_url=pg, **TEST_PORTS)
    if os.environ.get("OMS_TEST_KAFKA_BOOTSTRAP"):  # run the pipeline tests against a cluster you already have
        base = base.with_(kafka_bootstrap=os.environ["OMS_TEST_KAFKA_BOOTSTRAP"])
    local = LocalServers(base)
    local.start(echo=lambda m: print(m))
    try:
        yield base
    finally:
        local.stop(only_started=True)
        if remove:
            shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> Credentials:
    """API tokens and Shopify webhook secrets for the tenants the tests use."""
    return Credentials.create(["acme", "blue"], tmp_path_factory.mktemp("tenants"))


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
        web_port=int(os.environ.get("OMS_TEST_WEB_PORT", "26066")),
        log_level=os.environ.get("OMS_LOG_LEVEL", "warning"),
        pickup_secret=secrets.token_hex(16),  # pickup codes nobody could compute offline (there is no default)
    )
