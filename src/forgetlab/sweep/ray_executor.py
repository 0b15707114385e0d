"""The Ray executor (Ray core tasks): each run is a task that runs ``forgetlab run`` in a fresh process on
whichever node Ray picks, with ``threads`` CPUs reserved. The task sends the run directory back (its
checkpoint aside), and the driver writes it under its output root and records the run in the store,
so the store has one writer. Without an address a local Ray instance is started; with one
(``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others) the sweep joins it."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..store import Store
from .jobs import Job, Progress, die_with_parent, last_line, record_failure, run_command, run_env


def execute_remotely(config_yaml: str, threads: int, data_dir: str | None) -> dict:
    """The body of a Ray task: run one config in a scratch directory; return its files and exit code."""
    with tempfile.TemporaryDirectory(prefix="forgetlab-") as tmp:
        config_file, run_dir = Path(tmp) / "config.yaml", Path(tmp) / "run"
        config_file.write_text(config_yaml)
        env = run_env(threads)
        if data_dir and "FORGETLAB_DATA_DIR" not in env:     # a node's own data directory wins
            env["FORGETLAB_DATA_DIR"] = data_dir
        cmd = run_command(config_file, run_dir, Path(tmp) / "scratch.db", resume=False)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, preexec_fn=die_with_parent())
        files = {}
        if run_dir.is_dir():
            files = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
                     if p.is_file() and "checkpoint" not in p.relative_to(run_dir).parts}
        return {"code": proc.returncode, "log": proc.stdout + proc.stderr, "files": files,
                "seconds": time.perf_counter() - t0, "host": socket.gethostname()}


def run_ray(jobs: list[Job], store: Store, progress: Progress, threads: int, address: str | None) -> list[bool]:
    """Run the jobs as Ray tasks; the driver writes every result. True for each job that completed."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'forgetlab[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:
            raise UserError(f"--address {address}: could not join the Ray cluster ({last_line(str(exc))}); "
                            "with token authentication set RAY_AUTH_MODE=token and the cluster's token "
                            "(~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
    try:
        largest = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        if threads > largest:
            raise UserError(f"--threads {threads}: no node of the Ray cluster has that many CPUs (largest: {largest:g})")
        task = ray.remote(execute_remotely).options(num_cpus=threads, max_retries=0)
        data_dir = os.environ.get("FORGETLAB_DATA_DIR")
        data_dir = str(Path(data_dir).resolve()) if data_dir else None
        pending = {}
        for job in jobs:
            job.write_config()
            pending[task.remote(job.config_file.read_text(), threads, data_dir)] = job
        slots = max(1, int(ray.cluster_resources().get("CPU", 1) // threads))
        for _ in range(min(slots, len(pending))):
            progress.started()
        ok = {}
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            ok[id(job)] = _collect(ray, ref, job, store, progress)
            if len(pending) >= slots:
                progress.started()                           # a queued task takes the freed slot
        return [ok[id(job)] for job in jobs]
    finally:
        if started_here:
            ray.shutdown()


def _collect(ray, ref, job: Job, store: Store, progress: Progress) -> bool:
    """Record a finished task; whatever goes wrong marks this run failed and the sweep goes on."""
    try:
        return _write_back(ray.get(ref), job, store, progress)
    except Exception as exc:                                  # the task died (node lost, OOM) or its output was bad
        record_failure(store, job, f"{type(exc).__name__}: {last_line(str(exc))}")
        progress.finished(job, False, 0.0, f"({type(exc).__name__})")
        return False


def _write_back(out: dict, job: Job, store: Store, progress: Progress) -> bool:
    """Write a task's run directory under the driver's output root and record the run in the store."""
    for old in job.run_dir.rglob("*"):                        # files of an earlier attempt
        if old.is_file() and old != job.config_file:
            old.unlink()
    for rel, data in out["files"].items():
        target = job.run_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    (job.run_dir / "log.txt").write_text(out["log"])
    results_file = job.run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if out["code"] == 0 and results.get("status") == "completed":
        store.begin(results["run_id"], job.config.hash(), job.config.to_dict(), str(job.run_dir))
        store.complete(results["run_id"], results)
        progress.finished(job, True, out["seconds"])
        return True
    record_failure(store, job, f"exit {out['code']} on {out['host']}: {last_line(out['log'])}")
    progress.finished(job, False, out["seconds"], f"(exit {out['code']}, see {job.run_dir / 'log.txt'})")
    return False
