"""Engine worker processes: start N, wait until they own every partition, restart the ones that die, stop them.

Used by the main job and by the pipeline tests. Each worker is ``python -m engine.worker --index i`` with
the settings passed through the environment, logging to ``$OMS_STATE_DIR/logs/<app id>-worker<i>.log``. A worker
that dies is started again by :meth:`WorkerPool.supervise` (a crash costs latency, never an order): its
partitions move to the others after the session timeout, and back once it has restored its tables.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from engine.settings import REPO_ROOT, Settings


class WorkerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Restart:
    index: int
    exit_code: int | None
    after_s: float  # since the pool started
    log_tail: str


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM us when the parent dies, so no worker outlives its job.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process: children are
    therefore only ever forked from the pool's own long-lived spawner thread (see :class:`Spawner`)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Spawner:
    """Forks children from one thread that lives as long as the pool.

    A worker restarted by a monitor thread would otherwise be SIGTERMed the moment that thread returned (a
    main job once saw both restarted workers "exit 0" as its progress monitor stopped)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None

    def popen(self, argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="oms-spawner")
        return self._executor.submit(self._popen, argv, log_path, env).result()

    @staticmethod
    def _popen(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def close(self) -> None:
        """After the children are gone: the thread ends (and would SIGTERM any child still running)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class WorkerPool:
    def __init__(self, settings: Settings, count: int, env: dict[int, dict[str, str]] | None = None) -> None:
        self.settings = settings
        self.count = count
        self.env = env or {}  # extra environment per worker index (tests: fault injection)
        self.procs: list[subprocess.Popen | None] = [None] * count
        self.log_dir = Path(settings.state_dir) / "logs"
        self.restarts: list[Restart] = []
        self.started_at = time.monotonic()
        self.spawner = Spawner()
        self.stopped = False

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"{self.settings.app_id}-worker{index}.log"

    def start(self) -> None:
        self.stopped = False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        for i in range(self.count):
            self._spawn(i)

    def _spawn(self, index: int, env: dict[str, str] | None = None) -> None:
        extra = self.env.get(index, {}) if env is None else env
        env_all = {**os.environ, **self.settings.to_env(), "PYTHONPATH": str(REPO_ROOT), **extra}
        argv = [sys.executable, "-m", "engine.worker", "--index", str(index)]
        self.procs[index] = self.spawner.popen(argv, self.log_path(index), env_all)

    def supervise(self) -> list[Restart]:
        """Start again every worker that died (without the fault injection it may have been started with).
        Returns the restarts made by this call; all of them are in ``restarts``."""
        made: list[Restart] = []
        if self.stopped:  # a pool that was stopped on purpose is not restarted by whoever still supervises it
            return made
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is None:
                continue
            restart = Restart(i, proc.returncode, round(time.monotonic() - self.started_at, 1), self.log_tail(i, 15))
            self.restarts.append(restart)
            made.append(restart)
            self._spawn(i, env={})
        return made

    def restart(self, index: int, timeout_s: float = 40.0) -> None:
        """Restart one worker as in a rolling deploy: SIGUSR2 makes it finish its transaction and stop while
        staying a (static) member of the group, and the worker started again with the same index takes its
        partitions back without a rebalance."""
        self._terminate([self.procs[index]], timeout_s, signal.SIGUSR2)
        self._spawn(index, env={})

    def alive(self, index: int) -> bool:
        proc = self.procs[index]
        return proc is not None and proc.poll() is None

    def pid(self, index: int) -> int | None:
        proc = self.procs[index]
        return None if proc is None else proc.pid

    def _url(self, index: int, path: str) -> str:
        return f"http://127.0.0.1:{self.settings.web_port + index}{path}"

    def _get_json(self, url: str) -> dict | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:
            try:
                return json.loads(exc.read())  # type: ignore[no-any-return]
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def readiness(self, index: int) -> dict | None:
        return self._get_json(self._url(index, "/oms/ready/"))

    def stats(self, index: int) -> dict | None:
        """The worker's stage counters (``/oms/stats/``), or None if it does not answer."""
        return self._get_json(self._url(index, "/oms/stats/"))

    def wait_ready(self, topics: list[str], timeout_s: float = 180.0, indexes: list[int] | None = None) -> None:
        """Until every live worker in ``indexes`` reports ready and together they own every partition of
        every topic in ``topics``."""
        indexes = list(range(self.count)) if indexes is None else indexes
        deadline = time.monotonic() + timeout_s
        want = {f"{t}/{p}" for t in topics for p in range(self.settings.partitions)}
        last = ""
        while time.monotonic() < deadline:
            owned: set[str] = set()
            ready = True
            for i in indexes:
                if not self.alive(i):
                    raise WorkerError(f"worker {i} exited (code {self.procs[i].poll()}):\n{self.log_tail(i)}")
                state = self.readiness(i)
                if not state or not state.get("ready"):
                    ready = False
                    continue
                owned |= set(state["active"])
            if ready and want <= owned:
                return
            last = f"ready={ready}, owned {len(owned & want)}/{len(want)} partitions"
            time.sleep(0.5)
        raise WorkerError(f"workers not ready after {timeout_s:.0f}s ({last})")

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                proc.wait(timeout=30)

    def pause(self, index: int) -> None:
        """SIGSTOP: the worker freezes mid-whatever, as in a long GC pause or a stalled VM."""
        self.kill(index, signal.SIGSTOP)

    def resume(self, index: int) -> None:
        proc = self.procs[index]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGCONT)

    def signal_all(self, signum: int) -> int:
        """Send ``signum`` to every live worker process (not its group); returns how many got it. SIGUSR1
        makes a worker log the stacks of its threads and asyncio tasks."""
        sent = 0
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                os.kill(proc.pid, signum)
                sent += 1
        return sent

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM every worker (a clean shutdown), SIGKILL what is left after the timeout."""
        self.stopped = True
        for i in range(self.count):
            self.resume(i)  # a stopped process cannot handle SIGTERM
        self._terminate(self.procs, timeout_s)
        self.spawner.close()

    @staticmethod
    def _terminate(procs: list[subprocess.Popen | None], timeout_s: float, sig: int = signal.SIGTERM) -> None:
        live = [p for p in procs if p is not None and p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + timeout_s
        for proc in live:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def log_tail(self, index: int, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path(index).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
