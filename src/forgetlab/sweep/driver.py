"""A sweep's driver: skip what the store already holds, hand the rest to an executor, count the outcome."""
from __future__ import annotations

import os

from rich.console import Console

from ..errors import UserError
from ..store import Store
from .grid import Sweep
from .jobs import Job, Progress, job_dir

EXECUTORS = ("local", "ray")


def run_sweep(sweep: Sweep, executor: str = "local", workers: int = 1, threads: int | None = None,
              address: str | None = None, console: Console | None = None) -> dict[str, int]:
    """Run every grid point not yet completed in the sweep's store; returns counts of done, skipped, failed."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if address and executor != "ray":
        raise UserError("--address: only the ray executor joins a cluster")
    console = console or Console(stderr=True)
    sweep.out.mkdir(parents=True, exist_ok=True)
    store = Store(sweep.out / "forgetlab.db")
    completed = store.completed_hashes()
    jobs = [Job(r.label, r.config, job_dir(sweep.out, r.label, r.config))
            for r in sweep.runs if r.config.hash() not in completed]
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if executor == "local" else 1
    where = f"Ray ({address})" if address else ("a local Ray instance" if executor == "ray" else f"{workers} worker(s)")
    console.print(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(jobs)} already done, "
                  f"{len(jobs)} to run on {where}, {threads} thread(s) each; store {store.path}",
                  markup=False, highlight=False, soft_wrap=True)
    progress = Progress(len(jobs), console)
    if executor == "ray":
        from .ray_executor import run_ray
        ok = run_ray(jobs, store, progress, threads, address) if jobs else []
    else:
        from .local import run_local
        ok = run_local(jobs, store, progress, workers, threads)
    return {"done": sum(ok), "skipped": len(sweep.runs) - len(jobs), "failed": len(ok) - sum(ok)}
