"""Sampling profiles of running workers with py-spy, reduced to the top entries a reader can act on.

py-spy samples another process from outside (no instrumentation, no slow-down worth measuring), so the
benchmark profiles the very run it times. The raw output is collapsed stacks (``frame;frame;frame count``);
``top`` turns them into the functions where the samples were (self) and those under which they were
(inclusive), as shares of all samples.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from engine.settings import REPO_ROOT, Settings


class Profiler:
    """py-spy ``record`` attached to some pids until ``stop``; one collapsed-stack file per pid."""

    def __init__(self, out_dir: Path, rate: int = 50, gil_only: bool = True) -> None:
        self.out_dir = out_dir
        self.rate = rate
        self.gil_only = gil_only  # only samples holding the GIL: Python's own CPU, not threads waiting in C
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    @staticmethod
    def executable() -> str | None:
        """py-spy next to this Python (``.venv/bin``, without activating it) or on the PATH."""
        beside = Path(sys.executable).parent / "py-spy"
        return str(beside) if beside.exists() else shutil.which("py-spy")

    @classmethod
    def available(cls) -> bool:
        return cls.executable() is not None

    def attach(self, pid: int, name: str) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        out = self.out_dir / f"{name}.txt"
        argv = [self.executable() or "py-spy", "record", "--pid", str(pid), "--format", "raw", "--rate", str(self.rate)]
        argv += ["--nonblocking", "--output", str(out)] + (["--gil"] if self.gil_only else [])
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append((proc, out))

    def stop(self) -> list[Path]:
        """SIGINT makes py-spy write its file; a worker that already exited ends its profile by itself."""
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc, _ in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        files = [out for _, out in self.procs if out.exists()]
        self.procs = []
        return files


def _frame_name(frame: str) -> str:
    """``func (path/to/module.py:123)`` → ``func (module.py)``: lines differ per sample, functions do not."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0].rstrip(")")
    root = str(REPO_ROOT) + "/"
    if "/site-packages/" in path:
        path = path.split("/site-packages/", 1)[1]
    elif path.startswith(root):
        path = path[len(root) :]
    elif "/lib/python" in path:  # the standard library: from its package down
        path = path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{name} ({path})"


#: Frames that are waiting, not working: the event loop's selector and thread waits.
IDLE = ("select (selectors.py)", "_run_once (asyncio/base_events.py)", "wait (threading.py)", "poll (selectors.py)")


def top(files: list[Path], count: int = 12) -> dict:
    """Self and inclusive shares of the busy samples (idle waits left out), across all files."""
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, n = line.rpartition(" ")
            if not stack or not n.isdigit():
                continue
            frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
            frames = [f for f in frames if not f.startswith("thread (")]
            if not frames:
                continue
            samples = int(n)
            if frames[-1].startswith(IDLE):
                idle += samples
                continue
            busy += samples
            self_samples[frames[-1]] += samples
            for f in set(frames):
                inclusive[f] += samples
    total = max(1, busy)
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "self": [(f, round(100 * s / total, 1)) for f, s in self_samples.most_common(count)],
        "inclusive": [(f, round(100 * s / total, 1)) for f, s in inclusive.most_common(count * 3)],
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process group used between ``start`` and ``stop``: where the two cores went."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = {name: [p for p in pids if p] for name, pids in groups.items()}
        self.started: dict[int, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.started = {pid: cpu_seconds(pid) for pids in self.groups.values() for pid in pids}

    def stop(self) -> dict[str, float]:
        self.used = {
            name: round(sum(max(0.0, cpu_seconds(pid) - self.started.get(pid, 0.0)) for pid in pids), 2)
            for name, pids in self.groups.items()
        }
        return self.used


def broker_pids(settings: Settings) -> list[int]:
    """The local broker's pid when this project started it (an external broker is not measured)."""
    from deploy.local.servers import LocalServers

    return [s.pid for s in LocalServers(settings).status() if s.name == "kafka" and s.pid]
