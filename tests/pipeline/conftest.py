"""Fixtures of the pipeline tests."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from deploy.local.servers import LocalServerError, PostgresServer, RedisServer
from engine.settings import Settings
from tests.pipeline.harness import Pipeline


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_dir(name: str) -> Path:
    """A state directory for one private server, open for traversal (as root PostgreSQL runs as ``postgres``)."""
    path = Path(tempfile.mkdtemp(prefix=f"oms-test-own-{name}-"))
    path.chmod(0o711)
    return path


@contextlib.contextmanager
def own_redis(settings: Settings) -> Iterator[tuple[Settings, RedisServer]]:
    """A redis-server of the test's own on a free port; the test's settings pointed at it."""
    state = _own_dir("redis")
    server = RedisServer(settings.with_(redis_url=None, local_redis_port=free_port(), state_dir=str(state)))
    try:
        server.start()
        yield settings.with_(redis_url=None, local_redis_port=server.s.local_redis_port), server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)


@contextlib.contextmanager
def own_postgres(settings: Settings) -> Iterator[tuple[Settings, PostgresServer]]:
    """A PostgreSQL cluster of the test's own on a free port (its own initdb), the same database name; the test's
    settings pointed at it."""
    url = urlsplit(settings.postgres_url)
    netloc = f"{url.username or 'oms'}@127.0.0.1:{free_port()}"
    pg_url = urlunsplit((url.scheme, netloc, url.path, url.query, url.fragment))
    state = _own_dir("postgres")
    server = PostgresServer(settings.with_(postgres_url=pg_url, state_dir=str(state)))
    try:
        try:
            server.bindir()
        except LocalServerError as exc:
            pytest.skip(f"no PostgreSQL binaries here to start a server of the test's own: {exc}")
        server.start()
        yield settings.with_(postgres_url=pg_url), server
    finally:
        server.stop()
        shutil.rmtree(state, ignore_errors=True)
        if server.data.parent != state / "postgres":  # placed under /var/lib/postgresql (see PostgresServer)
            shutil.rmtree(server.data.parent, ignore_errors=True)


OWN_SERVERS = {"redis": own_redis, "postgres": own_postgres}


@pytest.fixture
def pipeline(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Pipeline]:
    """Topics of a fresh namespace; worker pools the test starts are stopped and the topics deleted after.

    A test marked ``own_servers("redis", "postgres")`` stops and starts those servers: the session's are shared
    with the tests running beside it, so it gets servers of its own (``Pipeline.own_servers``), on free ports."""
    marker = request.node.get_closest_marker("own_servers")
    with contextlib.ExitStack() as stack:
        own = {}
        for name in marker.args if marker else ():
            settings, own[name] = stack.enter_context(OWN_SERVERS[name](settings))
        p = Pipeline(settings, own_servers=own)
        stack.callback(p.close)  # before the servers of its own stop
        yield p
