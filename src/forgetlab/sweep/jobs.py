"""What every executor shares: one run's job (its config file and directory), the command that runs it
in a fresh process with limited threads, and the progress line."""
from __future__ import annotations

import ctypes
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from ..config import Config, dump_config
from ..store import Store

_PR_SET_PDEATHSIG, _SIGKILL = 1, 9


@dataclass
class Job:
    """One grid point to run: its label (the report's group), its config and its run directory."""
    label: str
    config: Config
    run_dir: Path

    @property
    def config_file(self) -> Path:
        return self.run_dir / "sweep-config.yaml"

    def write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.config, self.config_file)


def run_command(config_file: Path, run_dir: Path, store: Path, resume: bool) -> list[str]:
    """``forgetlab run`` in a fresh interpreter (this one's environment)."""
    cmd = [sys.executable, "-m", "forgetlab.cli", "run", str(config_file), "--out", str(run_dir), "--store", str(store)]
    return cmd + ["--resume"] if resume else cmd


def job_dir(out: Path, label: str, config: Config) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", label).strip("_")[:80]
    return out / f"{slug}-seed{config.seed}-{config.hash()[:8]}"


def run_env(threads: int) -> dict[str, str]:
    """The environment of a run's process: ``threads`` intra-op threads, so N runs do not oversubscribe."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


_LIBC = ctypes.CDLL(None) if sys.platform.startswith("linux") else None     # looked up before any fork


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn``: on Linux the run is killed when the process that started it dies (a killed
    sweep driver leaves no orphan run writing to the store); elsewhere a no-op. It only calls
    async-signal-safe functions, as a child forked from a threaded parent must."""
    parent = os.getpid()

    def preexec() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, _SIGKILL)
            if os.getppid() != parent:            # the parent died before the signal was set
                os._exit(1)

    return preexec


def record_failure(store: Store, job: Job, error: str) -> None:
    """Mark a job failed when its process ended without doing so itself (killed, crashed, bad exit)."""
    row = store.for_dir(job.run_dir)
    if row is not None and row["status"] == "completed":
        return                                  # it finished before the process went wrong: keep it
    if row is None:
        run_id = f"failed-{job.config.hash()[:8]}-{int(time.time())}"
        store.begin(run_id, job.config.hash(), job.config.to_dict(), str(job.run_dir))
    else:
        run_id = row["run_id"]
    store.fail(run_id, error)                   # a retry's new error replaces the old one


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:500] if lines else ""


class Progress:
    """One line per finished run: done / running / failed, and the time left at the throughput so far."""

    def __init__(self, total: int, console: Console):
        self.total, self.console = total, console
        self.done = self.failed = self.running = 0
        self.start = time.perf_counter()
        self._lock = threading.Lock()

    def started(self) -> None:
        with self._lock:
            self.running += 1

    def finished(self, job: Job, ok: bool, seconds: float, note: str = "") -> None:
        with self._lock:
            self.running -= 1
            self.done += ok
            self.failed += not ok
            finished = self.done + self.failed
            eta = (time.perf_counter() - self.start) / finished * (self.total - finished)
            status = "done" if ok else f"FAILED {note}"
            self.console.print(f"[{finished}/{self.total}: {self.done} done, {self.running} running, {self.failed} failed,"
                           f" ~{_duration(eta)} left] {job.label} seed={job.config.seed}: {status} ({seconds:.1f} s)",
                               markup=False, highlight=False, soft_wrap=True)


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
