"""The local executor: each run in its own process (clean peak-memory figures, failures contained),
``workers`` at a time, each with its share of the CPU threads. Runs write the store themselves
(it is safe for concurrent writers)."""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from ..store import Store
from .jobs import Job, Progress, die_with_parent, last_line, record_failure, run_command, run_env


def run_local(jobs: list[Job], store: Store, progress: Progress, workers: int, threads: int) -> list[bool]:
    """Run the jobs, ``workers`` at a time; True for each that completed."""

    def one(job: Job) -> bool:
        progress.started()
        t0 = time.perf_counter()
        try:
            code = attempt(job)
            note = f"(exit {code}, see {job.run_dir / 'log.txt'})"
        except Exception as exc:                 # the sweep goes on; the run is marked failed
            record_failure(store, job, f"{type(exc).__name__}: {last_line(str(exc))}")
            code, note = None, f"({type(exc).__name__}: {exc})"
        progress.finished(job, code == 0, time.perf_counter() - t0, note)
        return code == 0

    def attempt(job: Job) -> int:
        job.write_config()
        resume = (job.run_dir / "checkpoint" / "state.json").is_file()      # an interrupted earlier attempt
        log = job.run_dir / "log.txt"
        with open(log, "w") as fh:
            code = subprocess.call(run_command(job.config_file, job.run_dir, store.path, resume), stdout=fh,
                                   stderr=subprocess.STDOUT, env=run_env(threads), preexec_fn=die_with_parent())
        if code != 0:
            why = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            record_failure(store, job, f"{why}: {last_line(log.read_text(errors='replace'))}")
        return code

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs))
