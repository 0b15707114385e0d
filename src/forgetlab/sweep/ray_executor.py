"""The Ray executor (Ray core tasks): each run is a task that runs ``forgetlab run`` in a fresh process on
whichever node Ray picks, with ``cpus`` CPUs (its threads) and ``gpus`` GPUs reserved. The task sends the
run directory back (its checkpoint aside), and the driver writes it under its output root and records the
run in the store, so the store has one writer. Without an address a local Ray instance is started; with
one (``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the others) the sweep joins it.

With a storage location (storage.py) a run survives its node: the task mirrors the checkpoint there
after every task boundary, and a retry (Ray retries a task whose worker or node died, not a run that
exited non-zero) or a later sweep resumes from it; a run whose finished directory is in storage is
returned from there without running.
"""
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
from .storage import CheckpointMirror, RunStorage

RETRIES = 3                     # Ray retries of a task whose worker or node died
CONNECT_TIMEOUT_S = 3.0         # how long --address may take to answer


def execute_remotely(config_yaml: str, name: str, threads: int, gpus: float, data_dir: str | None,
                     storage: str | None = None) -> dict:
    """The body of a Ray task: run one config in a scratch directory (resuming from storage's checkpoint,
    mirroring its own there); return the run directory's files and the exit code. A run that reserved
    no GPU sees none (Ray leaves CUDA_VISIBLE_DEVICES alone then)."""
    where = _where()
    with tempfile.TemporaryDirectory(prefix="forgetlab-") as tmp:
        config_file, run_dir = Path(tmp) / "config.yaml", Path(tmp) / "run"
        config_file.write_text(config_yaml)
        run_dir.mkdir()
        stored = RunStorage(storage, name) if storage else None
        t0 = time.perf_counter()
        if stored is not None and stored.completed():           # finished before, never recorded
            stored.download_run(run_dir)
            return _outcome(run_dir, 0, where, time.perf_counter() - t0)
        state = stored.download_checkpoint(run_dir / "checkpoint") if stored else None
        env = run_env(threads)
        if not gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        if data_dir and "FORGETLAB_DATA_DIR" not in env:     # a node's own data directory wins
            env["FORGETLAB_DATA_DIR"] = data_dir
        cmd = run_command(config_file, run_dir, Path(tmp) / "scratch.db", resume=state is not None)
        how = f"resuming from the stored checkpoint after task {state['completed']}" if state else "starting"
        with open(run_dir / "log.txt", "a") as log:
            log.write(f"[forgetlab sweep] attempt on {where}: {how}\n")
            log.flush()
            mirror = CheckpointMirror(stored, run_dir).start() if stored else None
            try:
                code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent())
            finally:
                if mirror:
                    mirror.stop()
        if stored is not None and code == 0:
            try:
                stored.upload_run(run_dir)
            except Exception as exc:                          # the driver still gets the run
                with open(run_dir / "log.txt", "a") as log:
                    log.write(f"[forgetlab sweep] warning: storing the finished run failed: {type(exc).__name__}: {exc}\n")
        return _outcome(run_dir, code, where, time.perf_counter() - t0)


def _outcome(run_dir: Path, code: int, where: str, seconds: float) -> dict:
    files = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
             if p.is_file() and "checkpoint" not in p.relative_to(run_dir).parts}
    log = files.get("log.txt", b"").decode(errors="replace")
    return {"code": code, "log": log, "files": files, "seconds": seconds, "host": where}


def _where() -> str:
    """This machine, and the Ray node when run as a Ray task."""
    try:
        import ray
        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except ImportError:
        node = None
    return f"{socket.gethostname()} (Ray node {node})" if node else socket.gethostname()


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Fail in seconds, not after Ray's minutes of retries, when nothing at ``address`` speaks gRPC (as
    Ray's GCS does): a TCP connection, then the HTTP/2 preface answered by a SETTINGS frame (skipped
    when RAY_USE_TLS is set)."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.split("://", 1)[-1].rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address {address}: expected HOST:PORT, e.g. 10.0.0.1:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout) as conn:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            conn.settimeout(timeout)
            conn.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
            frame = conn.recv(9)
    except OSError as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, socket.timeout) else (exc.strerror or str(exc)).lower()
        raise UserError(f"--address {address}: could not join the Ray cluster ({why}); "
                        "is `ray start --head` running there, and the port open?") from None
    if len(frame) < 4 or frame[3] != 4:
        raise UserError(f"--address {address}: something answers there but it is not a Ray cluster "
                        "(the head's port is the one `ray start --head --port` printed, 6379 by default)")


def check_fits(nodes: list[dict], cpus: int, gpus: float) -> None:
    """A run must fit on one node: refuse when no live node has ``cpus`` CPUs and ``gpus`` GPUs."""
    alive = [n["Resources"] for n in nodes if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in alive):
        return
    sizes = ", ".join(sorted({f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in alive})) or "none"
    asked = f"--cpus-per-run {cpus}" + (f" --gpus-per-run {gpus:g}" if gpus else "")
    raise UserError(f"{asked}: no node of the Ray cluster has that many CPUs/GPUs (its nodes: {sizes})")


def run_ray(jobs: list[Job], store: Store, progress: Progress, cpus: int, gpus: float = 0.0,
            address: str | None = None, storage: str | None = None) -> list[bool]:
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
        check_fits(ray.nodes(), cpus, gpus)
        task = ray.remote(execute_remotely).options(num_cpus=cpus, num_gpus=gpus, max_retries=RETRIES)
        data_dir = os.environ.get("FORGETLAB_DATA_DIR")
        data_dir = str(Path(data_dir).resolve()) if data_dir else None
        pending = {}
        for job in jobs:
            job.write_config()
            pending[task.remote(job.config_file.read_text(), job.run_dir.name, cpus, gpus, data_dir, storage)] = job
        resources = ray.cluster_resources()
        slots = int(resources.get("CPU", 1) // cpus)
        if gpus:
            slots = min(slots, int(resources.get("GPU", 0) // gpus))
        slots = max(1, slots)
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
