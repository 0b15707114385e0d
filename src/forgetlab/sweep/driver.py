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
              address: str | None = None, console: Console | None = None, cpus_per_run: int | None = None,
              gpus_per_run: float | None = None, storage: str | None = None) -> dict[str, int]:
    """Run every grid point not yet completed in the sweep's store; returns counts of done, skipped, failed.
    On Ray ``threads`` is another name for ``cpus_per_run`` (each run's reserved CPUs and its threads)."""
    if executor not in EXECUTORS:
        raise UserError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor != "ray":
        given = [name for name, value in (("--address", address), ("--cpus-per-run", cpus_per_run),
                                          ("--gpus-per-run", gpus_per_run), ("--storage", storage)) if value]
        if given:
            raise UserError(f"{given[0]}: an option of the ray executor (--executor ray); locally use --workers and --threads")
    else:
        if threads and cpus_per_run and threads != cpus_per_run:
            raise UserError(f"--threads {threads} --cpus-per-run {cpus_per_run}: on Ray --threads is another name "
                            "for --cpus-per-run (a run's CPUs and threads); give one")
        threads = cpus_per_run or threads or 1
        gpus_per_run = gpus_per_run or 0.0
        if gpus_per_run < 0 or (gpus_per_run > 1 and gpus_per_run != int(gpus_per_run)):
            raise UserError(f"--gpus-per-run {gpus_per_run:g}: expected a fraction up to 1 or a whole number of GPUs")
        from .ray_executor import check_address
        from .storage import absolute, open_storage
        if address:
            check_address(address)                  # seconds, not Ray's minutes of retries
        if storage:
            storage = absolute(storage)
            open_storage(storage)                   # a bad location fails here, not in every task
    console = console or Console(stderr=True)
    sweep.out.mkdir(parents=True, exist_ok=True)
    store = Store(sweep.out / "forgetlab.db")
    completed = store.completed_hashes()
    jobs = [Job(r.label, r.config, job_dir(sweep.out, r.label, r.config))
            for r in sweep.runs if r.config.hash() not in completed]
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if executor == "local" else 1
    where = f"Ray ({address})" if address else ("a local Ray instance" if executor == "ray" else f"{workers} worker(s)")
    each = f"{threads} thread(s)" + (f" and {gpus_per_run:g} GPU(s)" if gpus_per_run else "")
    kept = f"; checkpoints in {storage}" if storage else ""
    console.print(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(jobs)} already done, "
                  f"{len(jobs)} to run on {where}, {each} each; store {store.path}{kept}",
                  markup=False, highlight=False, soft_wrap=True)
    progress = Progress(len(jobs), console)
    if executor == "ray":
        from .ray_executor import run_ray
        ok = run_ray(jobs, store, progress, threads, gpus_per_run, address, storage) if jobs else []
    else:
        from .local import run_local
        ok = run_local(jobs, store, progress, workers, threads)
    return {"done": sum(ok), "skipped": len(sweep.runs) - len(jobs), "failed": len(ok) - sum(ok)}
