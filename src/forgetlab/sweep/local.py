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
        job.write_config()
        resume = (job.run_dir / "checkpoint" / "state.json").is_file()      # an interrupted earlier attempt
        log = job.run_dir / "log.txt"
        progress.started()
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            code = subprocess.call(run_command(job.config_file, job.run_dir, store.path, resume), stdout=fh,
                                   stderr=subprocess.STDOUT, env=run_env(threads), preexec_fn=die_with_parent)
        if code != 0:
            why = f"killed by signal {-code}" if code < 0 else f"exit {code}"
            record_failure(store, job, f"{why}: {last_line(log.read_text(errors='replace'))}")
        progress.finished(job, code == 0, time.perf_counter() - t0, f"(exit {code}, see {log})")
        return code == 0

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, jobs))
