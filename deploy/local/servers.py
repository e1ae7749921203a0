"""Local Apache Kafka (KRaft, single node), Redis and PostgreSQL on 127.0.0.1: provision, start, status, stop.

Kafka runs from jars that Maven resolves from Maven Central (``deploy/local/pom.xml``) into a cache
keyed by the Kafka version and the pom's hash, so only the first start downloads. Redis is Debian's
``redis-server``, installed with apt when missing and we are root; PostgreSQL likewise (Debian's ``postgresql``,
its binaries run as the ``postgres`` user when we are root, since the server refuses to run as root). Each
server writes a pid file and a log under ``$OMS_STATE_DIR``; readiness is a real round trip (Kafka metadata,
Redis PING, a PostgreSQL query).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from engine.kafka.admin import KafkaUnavailable, wait_for_broker
from engine.settings import REPO_ROOT, Settings

DEPLOY_DIR = REPO_ROOT / "deploy" / "local"


class LocalServerError(RuntimeError):
    """A local server cannot be provisioned or started; the message says what is missing and what to do."""


@dataclass
class Status:
    name: str
    running: bool
    pid: int | None
    address: str
    managed: bool  # started by us (pid file) rather than found already listening
    log: Path | None
    detail: str = ""

    def line(self) -> str:
        state = "running" if self.running else "stopped"
        who = f"pid {self.pid}" if self.pid else ("external" if self.running else "-")
        return f"{self.name:8s} {state:8s} {self.address:22s} {who:12s} {self.detail}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists"; treat it as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_pid(pid: int, timeout_s: float, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _spawn(
    cmd: list[str], log: Path, pid_file: Path, env: dict[str, str] | None = None, user: str | None = None
) -> subprocess.Popen:
    """Start ``cmd`` in its own session, output to ``log``; as ``user`` (its own group, no other) if given."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )
    pid_file.write_text(str(proc.pid))
    return proc


def _apt_install(package: str, echo=print) -> bool:
    """Install a Debian package when we are root and have apt (``apt-get update`` once if the first try fails);
    False when we cannot install anything here. A failed install is an error that says why."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    echo(f"Installing {package} from Debian (apt-get)…")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", package]
    if subprocess.run(cmd, capture_output=True, env=env).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise LocalServerError(f"apt-get install {package} failed:\n{proc.stderr[-2000:]}")
    return True


class KafkaServer:
    name = "kafka"

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.home = Path(settings.state_dir) / "kafka"
        self.data = self.home / "data"
        self.props = self.home / "server.properties"
        self.pid_file = self.home / "kafka.pid"
        self.log = Path(settings.state_dir) / "logs" / "kafka.log"
        pom = (DEPLOY_DIR / "pom.xml").read_bytes()
        digest = hashlib.sha256(pom + settings.kafka_version.encode()).hexdigest()[:12]
        self.libs = Path(settings.cache_dir) / f"kafka-{settings.kafka_version}-{digest}" / "libs"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.local_kafka_port}"

    # -- provisioning -------------------------------------------------------------------------------
    def ensure_jars(self, echo=print) -> Path:
        """Resolve the broker jars with Maven once; later calls find them in the cache."""
        marker = self.libs / ".complete"
        if marker.exists():
            return self.libs
        java, mvn = shutil.which("java"), shutil.which("mvn")
        missing = [n for n, p in (("Java 17+ (java)", java), ("Maven (mvn)", mvn)) if not p]
        if missing:
            raise LocalServerError(
                f"cannot provision the local Kafka broker: {' and '.join(missing)} not found on PATH. "
                "Install them (Debian: apt-get install openjdk-17-jre-headless maven) "
                "or point KAFKA_BOOTSTRAP at an existing cluster."
            )
        self._check_java(java)
        echo(f"Resolving Apache Kafka {self.s.kafka_version} jars from Maven Central (first start only)…")
        tmp = self.libs.with_name("libs.partial")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(DEPLOY_DIR / "pom.xml"),
            f"-Dkafka.version={self.s.kafka_version}",
            "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            raise LocalServerError(
                "Maven could not resolve the Kafka jars (is Maven Central reachable?):\n"
                + (proc.stdout + proc.stderr)[-3000:]
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        marker.write_text(self.s.kafka_version)
        return self.libs

    @staticmethod
    def _check_java(java: str) -> None:
        out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
        try:
            major = int(out.split('"')[1].split(".")[0])
        except (IndexError, ValueError):
            return
        if major < 17:
            raise LocalServerError(f"Kafka 4 needs Java 17 or newer; found {out.splitlines()[0]}")

    def _java_cmd(self, *args: str, heap: str = "256m") -> list[str]:
        java = shutil.which("java") or "java"
        log4j = f"-Dlog4j2.configurationFile={DEPLOY_DIR / 'log4j2.properties'}"
        return [java, f"-Xmx{heap}", log4j, "-cp", f"{self.libs}/*", *args]

    def _format(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        template = (DEPLOY_DIR / "server.properties.in").read_text()
        self.props.write_text(
            template.replace("@BROKER_PORT@", str(self.s.local_kafka_port))
            .replace("@CONTROLLER_PORT@", str(self.s.local_controller_port))
            .replace("@DATA_DIR@", str(self.data))
        )
        if (self.data / "meta.properties").exists():
            return
        cluster_id_file = self.home / "cluster.id"
        if not cluster_id_file.exists():
            cid = (
                subprocess.run(self._java_cmd("kafka.tools.StorageTool", "random-uuid"), capture_output=True, text=True)
                .stdout.strip()
                .splitlines()
            )
            if not cid:
                raise LocalServerError("kafka StorageTool random-uuid printed nothing")
            cluster_id_file.write_text(cid[-1])
        proc = subprocess.run(
            self._java_cmd(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id_file.read_text().strip(),
                "-c",
                str(self.props),
                "--ignore-formatted",
            ),
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise LocalServerError(f"formatting Kafka storage failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    # -- lifecycle ----------------------------------------------------------------------------------
    def status(self) -> Status:
        pid = _read_pid(self.pid_file)
        listening = _port_open(self.s.local_kafka_port)
        return Status(self.name, listening, pid, self.address, pid is not None, self.log)

    def start(self, echo=print, timeout_s: float = 90.0) -> bool:
        """Start the broker unless one already answers on the port. Returns True if we started it."""
        if _port_open(self.s.local_kafka_port):
            wait_for_broker(self.address, timeout_s=timeout_s)
            return False
        self.ensure_jars(echo)
        self._format()
        cmd = self._java_cmd(
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={self.log.parent}",
            "kafka.Kafka",
            str(self.props),
            heap=self.s.kafka_heap,
        )
        proc = _spawn(cmd, self.log, self.pid_file)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalServerError(f"Kafka exited with {proc.returncode}; log {self.log}:\n{_tail(self.log)}")
            try:
                wait_for_broker(self.address, timeout_s=2.0)
                return True
            except KafkaUnavailable:
                continue
        _stop_pid(proc.pid, 5)
        raise LocalServerError(f"Kafka did not become ready in {timeout_s:.0f}s; log {self.log}:\n{_tail(self.log)}")

    def stop(self) -> bool:
        pid = _read_pid(self.pid_file)
        if pid is None:
            return False
        _stop_pid(pid, 30.0)
        self.pid_file.unlink(missing_ok=True)
        return True


class RedisServer:
    name = "redis"

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.home = Path(settings.state_dir) / "redis"
        self.pid_file = self.home / "redis.pid"
        self.log = Path(settings.state_dir) / "logs" / "redis.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.local_redis_port}"

    @staticmethod
    def binary(echo=print) -> str:
        found = shutil.which("redis-server") or next(
            (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.path.exists(p)), None
        )
        if found:
            return found
        if _apt_install("redis-server", echo):
            found = shutil.which("redis-server") or "/usr/bin/redis-server"
            if os.path.exists(found):
                return found
        raise LocalServerError(
            "redis-server not found. Install it (Debian: sudo apt-get install redis-server) "
            "or point REDIS_URL at an existing Redis."
        )

    def _ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host="127.0.0.1", port=self.s.local_redis_port, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def status(self) -> Status:
        pid = _read_pid(self.pid_file)
        return Status(self.name, self._ping(), pid, self.address, pid is not None, self.log)

    def start(self, echo=print, timeout_s: float = 20.0) -> bool:
        if self._ping():
            return False
        if _port_open(self.s.local_redis_port):
            raise LocalServerError(f"port {self.s.local_redis_port} is taken by something that is not Redis")
        binary = self.binary(echo)
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary,
            "--port",
            str(self.s.local_redis_port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.home),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        proc = _spawn(cmd, self.log, self.pid_file)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalServerError(
                    f"redis-server exited with {proc.returncode}; log {self.log}:\n{_tail(self.log)}"
                )
            if self._ping():
                return True
            time.sleep(0.1)
        _stop_pid(proc.pid, 5)
        raise LocalServerError(f"redis-server did not answer PING in {timeout_s:.0f}s; log {self.log}")

    def stop(self) -> bool:
        pid = _read_pid(self.pid_file)
        if pid is None:
            return False
        _stop_pid(pid, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True


class PostgresServer:
    """A PostgreSQL cluster of its own under ``$OMS_STATE_DIR/postgres`` (not the system's), 127.0.0.1 only, trust
    auth; its superuser and database are the user and database of ``settings.postgres_url``."""

    name = "postgres"
    os_user = "postgres"  # who runs initdb and the server when we are root (the Debian package creates it)

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.home = Path(settings.state_dir) / "postgres"
        self.data = self.home / "data"  # or under /var/lib/postgresql when its user cannot reach it (_place_data)
        self.pid_file = self.home / "postgres.pid"
        self.log = Path(settings.state_dir) / "logs" / "postgres.log"
        url = urlsplit(settings.postgres_url)
        self.user = url.username or "oms"
        self.database = url.path.lstrip("/") or self.user

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.s.local_postgres_port}"

    @staticmethod
    def bindir(echo=print) -> Path:
        """Where ``initdb`` and ``postgres`` are: Debian's newest /usr/lib/postgresql/<major>/bin, else PATH."""

        def find() -> Path | None:
            majors = [p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/postgres") if p.parts[-3].isdigit()]
            if majors:
                return max(majors, key=lambda d: int(d.parts[-2]))
            on_path = shutil.which("postgres")
            bindir = Path(on_path).resolve().parent if on_path else None
            return bindir if bindir and (bindir / "initdb").exists() else None

        found = find()
        if found:
            return found
        if _apt_install("postgresql", echo):
            found = find()
            if found:
                return found
        raise LocalServerError(
            "PostgreSQL (initdb, postgres) not found. Install it (Debian: sudo apt-get install postgresql) "
            "or point OMS_POSTGRES_URL at an existing PostgreSQL."
        )

    def _run_as(self) -> str | None:
        """PostgreSQL refuses to run as root: then it runs as the ``postgres`` user, else as we are."""
        if os.geteuid() != 0:
            return None
        try:
            import pwd

            pwd.getpwnam(self.os_user)
        except KeyError:
            raise LocalServerError(
                f"running as root, and PostgreSQL refuses to: create a '{self.os_user}' user for it "
                "(the Debian package does: apt-get install postgresql)"
            ) from None
        return self.os_user

    def _connect(self, **kwargs):
        import psycopg

        return psycopg.connect(self.s.postgres_url, dbname="postgres", connect_timeout=2, **kwargs)

    def _query_ok(self) -> bool:
        import psycopg

        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _place_data(self, user: str | None) -> None:
        """As root the server runs as ``user``, which must reach its data directory through every directory above
        it. A checkout under a closed home (``/root/...``) does not let it: then the data live under the Debian
        package's ``/var/lib/postgresql`` (one directory per state directory, so the next start finds them)."""
        if user is None or (self.data / "PG_VERSION").exists():
            return
        self.home.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["test", "-x", str(self.home)], user=user, group=user, extra_groups=[]).returncode == 0:
            return
        digest = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:12]
        self.data = Path("/var/lib/postgresql") / f"oms-{digest}" / "data"

    def _initdb(self, bindir: Path, user: str | None) -> None:
        self._place_data(user)
        if (self.data / "PG_VERSION").exists():
            return
        self.data.mkdir(parents=True, exist_ok=True)
        self.data.chmod(0o700)
        if user:
            shutil.chown(self.data, user, user)
            probe = subprocess.run(["test", "-w", str(self.data)], user=user, group=user, extra_groups=[])
            if probe.returncode != 0:
                raise LocalServerError(
                    f"the '{user}' user cannot reach {self.data} (a directory above it is closed to other users): "
                    "set OMS_STATE_DIR to a directory it can traverse"
                )
        cmd = [str(bindir / "initdb"), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8"]
        cmd += ["--no-locale", "--no-instructions"]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, user=user, group=user, extra_groups=[] if user else None
        )
        if proc.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise LocalServerError(f"initdb failed:\n{(proc.stdout + proc.stderr)[-2000:]}")

    def _create_database(self) -> None:
        from psycopg import sql

        with self._connect(autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def status(self) -> Status:
        pid = _read_pid(self.pid_file)
        return Status(self.name, self._query_ok(), pid, self.address, pid is not None, self.log)

    def start(self, echo=print, timeout_s: float = 60.0) -> bool:
        if self._query_ok():
            self._create_database()
            return False
        if _port_open(self.s.local_postgres_port):
            raise LocalServerError(
                f"port {self.s.local_postgres_port} is taken by something that does not let user {self.user!r} in "
                "(put a free port in OMS_POSTGRES_URL)"
            )
        bindir = self.bindir(echo)
        user = self._run_as()
        self.home.mkdir(parents=True, exist_ok=True)
        self._initdb(bindir, user)
        cmd = [
            str(bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.s.local_postgres_port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "unix_socket_directories=",  # TCP only: no socket in a system directory we may not own
        ]
        proc = _spawn(cmd, self.log, self.pid_file, user=user)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalServerError(f"postgres exited with {proc.returncode}; log {self.log}:\n{_tail(self.log)}")
            if self._query_ok():
                self._create_database()
                return True
            time.sleep(0.2)
        _stop_pid(proc.pid, 10, signal.SIGINT)
        raise LocalServerError(f"postgres did not answer in {timeout_s:.0f}s; log {self.log}:\n{_tail(self.log)}")

    def stop(self) -> bool:
        pid = _read_pid(self.pid_file)
        if pid is None:
            return False
        _stop_pid(pid, 30.0, signal.SIGINT)  # fast shutdown: SIGTERM would wait for every client to leave
        self.pid_file.unlink(missing_ok=True)
        return True


class LocalServers:
    """The local Kafka, Redis and PostgreSQL that the CLI and the tests start when no external ones are configured."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kafka = KafkaServer(settings)
        self.redis = RedisServer(settings)
        self.postgres = PostgresServer(settings)
        self.started: list[str] = []

    def start(self, echo=print) -> list[str]:
        """Start what the settings need; returns the names of the servers this call started."""
        started = []
        if self.settings.uses_local_kafka and self.kafka.start(echo):
            started.append("kafka")
        if self.settings.uses_local_redis and self.redis.start(echo):
            started.append("redis")
        if self.settings.uses_local_postgres and self.postgres.start(echo):
            started.append("postgres")
        self.started += started
        return started

    def stop(self, only_started: bool = True) -> list[str]:
        stopped = []
        for name, server in (("postgres", self.postgres), ("redis", self.redis), ("kafka", self.kafka)):
            if (not only_started or name in self.started) and server.stop():
                stopped.append(name)
        self.started = [n for n in self.started if n not in stopped]
        return stopped

    def status(self) -> list[Status]:
        return [self.kafka.status(), self.redis.status(), self.postgres.status()]
