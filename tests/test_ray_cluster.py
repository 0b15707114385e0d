"""Sweeps on a Ray cluster: checkpoints mirrored to storage, a lost worker node and a killed driver
survived with every run completed once, resources per run, and an address that cannot be joined.
The clusters are local (``ray.cluster_utils.Cluster``: nodes of one CPU on this machine)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from forgetlab.errors import UserError
from forgetlab.store import Store
from forgetlab.sweep import load_sweep, run_sweep
from forgetlab.sweep.jobs import run_command, run_env
from forgetlab.sweep.ray_executor import check_fits, execute_remotely
from forgetlab.sweep.storage import CheckpointMirror, RunStorage

ray = pytest.importorskip("ray")

EPOCHS = 50                         # 1-2 s a task on one thread: a node or driver is killed between boundaries
STARTED = "[forgetlab sweep] attempt on "


# -- checkpoint mirroring (no Ray) -------------------------------------------------------------
class RecordingFS:
    """An fsspec filesystem that records every write, move and removal in storage."""

    def __init__(self, fs, before_put=None):
        self.fs, self.ops, self.before_put = fs, [], before_put

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def put_file(self, local, path):
        if self.before_put:
            self.before_put(self, path)
        self.fs.put_file(local, path)
        self.ops.append(("put", path, None))

    def pipe_file(self, path, data):
        self.fs.pipe_file(path, data)
        self.ops.append(("pipe", path, data))

    def mv(self, a, b):
        self.fs.mv(a, b)
        self.ops.append(("mv", b, None))

    def rm(self, path, recursive=False):
        self.fs.rm(path, recursive=recursive)
        self.ops.append(("rm", path, None))


def save_checkpoint(folder: Path, task: int, backbone_task: int) -> None:
    """What checkpoint.save leaves: per-task files, then state.json replaced, then the stale files go."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {"backbone": f"backbone-{backbone_task}.safetensors", "head": f"head-{task}.safetensors",
             "method": f"method-{task}.safetensors"}
    for name in files.values():
        if not (folder / name).exists():
            (folder / name).write_bytes(name.encode())
    (folder / "state.json.tmp").write_text(json.dumps({"completed": task + 1, "files": files}))
    os.replace(folder / "state.json.tmp", folder / "state.json")
    for f in folder.glob("*-[0-9]*.safetensors"):
        if f.name not in files.values():
            f.unlink()


def replay(ops, root: str) -> None:
    """Walk the recorded operations: after each, the state.json in storage names only files present."""
    present, state, pending = set(), None, {}
    for op, path, data in ops:
        name = path.rsplit("/", 1)[-1]
        if op == "put":
            present.add(name)
        elif op == "pipe":
            pending[name] = data
        elif op == "mv":
            assert name == "state.json"
            state = json.loads(pending.pop("state.json.tmp"))
        elif op == "rm":
            present.discard(name)
        if state:
            assert set(state["files"].values()) <= present, (op, path)


def test_storage_always_holds_a_complete_checkpoint_with_state_json_last(tmp_path):
    run_dir, ckpt = tmp_path / "run", tmp_path / "run" / "checkpoint"
    stored = RunStorage(str(tmp_path / "storage"), "job")
    stored.fs = RecordingFS(stored.fs)
    mirror = CheckpointMirror(stored, run_dir, interval=0.01)
    ckpt.mkdir(parents=True)
    (ckpt / "cka-reference.safetensors").write_bytes(b"cka")      # a kind's file, written before task 1
    mirror.sync()
    assert stored.fs.ops == []                                     # no state.json yet: nothing to upload
    save_checkpoint(ckpt, 0, backbone_task=0)
    mirror.sync()
    save_checkpoint(ckpt, 1, backbone_task=0)                      # backbone unchanged: its file is kept
    mirror.sync()
    mirror.sync()                                                  # nothing changed: nothing uploaded
    names = [(op, path.rsplit("/", 1)[-1]) for op, path, _ in stored.fs.ops]
    assert names == [("put", "backbone-0.safetensors"), ("put", "cka-reference.safetensors"),
                     ("put", "head-0.safetensors"), ("put", "method-0.safetensors"),
                     ("pipe", "state.json.tmp"), ("mv", "state.json"),
                     ("put", "head-1.safetensors"), ("put", "method-1.safetensors"),
                     ("pipe", "state.json.tmp"), ("mv", "state.json"),
                     ("rm", "head-0.safetensors"), ("rm", "method-0.safetensors")]
    in_storage = sorted(p.name for p in (tmp_path / "storage" / "job" / "checkpoint").iterdir())
    assert in_storage == sorted(p.name for p in ckpt.iterdir())
    assert mirror.uploads == 2

    # the thread: checkpoints replaced while it uploads; a newer one replaces the one being sent
    def next_checkpoint_mid_upload(fs, path):
        if path.endswith("head-2.safetensors") and not (ckpt / "head-3.safetensors").exists():
            save_checkpoint(ckpt, 3, backbone_task=3)              # head-2 is gone before it is read
    stored.fs.before_put = next_checkpoint_mid_upload
    mirror.start()
    save_checkpoint(ckpt, 2, backbone_task=2)
    deadline = time.time() + 10
    while time.time() < deadline and json.loads((tmp_path / "storage/job/checkpoint/state.json").read_text())["completed"] < 4:
        time.sleep(0.02)
    mirror.stop()
    replay(stored.fs.ops, stored.ckpt)
    in_storage = sorted(p.name for p in (tmp_path / "storage" / "job" / "checkpoint").iterdir())
    assert in_storage == sorted(p.name for p in ckpt.iterdir()) == [
        "backbone-3.safetensors", "cka-reference.safetensors", "head-3.safetensors", "method-3.safetensors", "state.json"]


def test_a_task_resumes_from_storage_and_returns_a_stored_finished_run_without_running(tmp_path, monkeypatch):
    storage = str(tmp_path / "storage")
    stored = RunStorage(storage, "job")
    ckpt = tmp_path / "earlier" / "checkpoint"
    save_checkpoint(ckpt, 0, backbone_task=0)
    stored.upload_checkpoint(ckpt)
    stored.upload_log(tmp_path / "earlier" / "log.txt")
    seen = {}

    def fake_run(cmd, stdout, **kwargs):                           # the run: what it got, then a crash
        run_dir = Path(cmd[cmd.index("--out") + 1])
        seen["cmd"], seen["files"] = cmd, sorted(p.name for p in (run_dir / "checkpoint").iterdir())
        seen["gpus"] = kwargs["env"]["CUDA_VISIBLE_DEVICES"]
        return 3
    monkeypatch.setattr(subprocess, "call", fake_run)
    out = execute_remotely("seed: 0\n", "job", 1, 0.0, None, storage)
    assert seen["cmd"][-1] == "--resume" and seen["gpus"] == ""        # no GPU reserved: none seen
    assert seen["files"] == ["backbone-0.safetensors", "head-0.safetensors", "method-0.safetensors", "state.json"]
    assert out["code"] == 3 and "resuming from the stored checkpoint after task 1" in out["log"]
    assert not stored.completed()

    finished = tmp_path / "finished"                               # a finished run in storage
    finished.mkdir()
    (finished / "log.txt").write_text("the run's log\n")
    (finished / "results.json").write_text(json.dumps({"status": "completed", "run_id": "r1"}))
    stored.upload_run(finished)
    assert stored.completed() and not (tmp_path / "storage" / "job" / "checkpoint").exists()
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("a stored finished run ran again"))
    out = execute_remotely("seed: 0\n", "job", 1, 0.0, None, storage)
    assert out["code"] == 0 and out["log"] == "the run's log\n"
    assert json.loads(out["files"]["results.json"]) == {"status": "completed", "run_id": "r1"}


def test_a_run_must_fit_on_one_node():
    nodes = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}]
    check_fits(nodes, 4, 0.0)
    check_fits(nodes, 2, 0.5)
    with pytest.raises(UserError, match=r"^--cpus-per-run 4 --gpus-per-run 0.5: no node .*"
                                        r"\(its nodes: 2 CPU \+ 1 GPU, 4 CPU \+ 0 GPU\)$"):
        check_fits(nodes, 4, 0.5)
    with pytest.raises(UserError, match=r"^--cpus-per-run 8: no node"):
        check_fits(nodes, 8, 0.0)


def test_ray_options_are_refused_locally_and_threads_is_cpus_per_run_on_ray(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"seed": [0]}))
    for option in ({"storage": str(tmp_path)}, {"cpus_per_run": 2}, {"gpus_per_run": 0.5}):
        with pytest.raises(UserError, match=r"^--(storage|cpus-per-run|gpus-per-run): an option of the ray executor"):
            run_sweep(sweep, **option)
    with pytest.raises(UserError, match=r"^--threads 1 --cpus-per-run 2: on Ray --threads is another name"):
        run_sweep(sweep, executor="ray", threads=1, cpus_per_run=2)
    with pytest.raises(UserError, match=r"^--gpus-per-run 1.5: expected a fraction up to 1 or a whole number"):
        run_sweep(sweep, executor="ray", gpus_per_run=1.5)


# -- an address that cannot be joined ----------------------------------------------------------
def test_an_address_that_cannot_be_joined_fails_in_seconds_with_one_line(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"seed": [0]}))
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()                                                 # nothing listens: refused at once
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=rf"^--address 127.0.0.1:{port}: could not join the Ray cluster"):
        run_sweep(sweep, executor="ray", address=f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 10

    other = socket.socket()                                        # another service: answers, not in HTTP/2
    other.bind(("127.0.0.1", 0))
    other.listen()
    threading.Thread(target=lambda: other.accept()[0].sendall(b"SSH-2.0-OpenSSH_9.6\r\n"), daemon=True).start()
    with pytest.raises(UserError, match=r": something answers there but it is not a Ray cluster"):
        run_sweep(sweep, executor="ray", address=f"localhost:{other.getsockname()[1]}")
    other.close()

    t0 = time.perf_counter()                                       # the CLI's start-up on this machine now
    missing = subprocess.run([sys.executable, "-m", "forgetlab.cli", "sweep", str(tmp_path / "missing.yaml"),
                              "--executor", "ray", "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=60)
    start_up = time.perf_counter() - t0
    assert missing.returncode == 2 and "sweep file not found" in missing.stderr
    silent = socket.socket()                                       # listens, accepts, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "forgetlab.cli", "sweep", str(write_sweep(tmp_path, {"seed": [0]})),
                               "--executor", "ray", "--address", f"127.0.0.1:{silent.getsockname()[1]}"],
                              capture_output=True, text=True, timeout=60)
        seconds = time.perf_counter() - t0
    finally:
        silent.close()
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "could not join the Ray cluster (no answer within 3 s)" in lines[0]
    assert seconds < start_up + 6                                  # the CLI's start-up, then 3 s of waiting


# -- clusters ----------------------------------------------------------------------------------
def write_sweep(tmp_path, grid, zipped=None, out="out") -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(tiny_config(train={"epochs": EPOCHS})))
    path = tmp_path / f"sweep-{out}.yaml"
    spec = {"name": "t", "base": "base.yaml", "grid": grid, "out": str(tmp_path / out), **({"zip": zipped} if zipped else {})}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The matrices of uninterrupted runs of seeds 0 and 1 (one thread each, as on the cluster)."""
    tmp = tmp_path_factory.mktemp("straight")
    procs = {}
    for seed in (0, 1):
        cfg = tmp / f"c{seed}.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config(seed=seed, train={"epochs": EPOCHS})))
        procs[seed] = subprocess.Popen(run_command(cfg, tmp / f"run{seed}", tmp / "s.db", resume=False),
                                       env=run_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert all(p.wait(timeout=300) == 0 for p in procs.values())
    return {seed: json.loads((tmp / f"run{seed}" / "results.json").read_text())["matrices"] for seed in procs}


@pytest.fixture
def cluster():
    """A head and a worker node of one CPU each; everything stopped afterwards."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def stored_runs(storage: Path) -> dict[str, dict]:
    """Each run in storage: its checkpoint's completed tasks (None when it has none) and its log."""
    runs = {}
    for d in storage.iterdir() if storage.is_dir() else []:
        try:
            state = json.loads((d / "checkpoint" / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        log = d / "log.txt"
        runs[d.name] = {"completed": state and state["completed"], "log": log.read_text() if log.is_file() else ""}
    return runs


def run_logs(out: Path) -> dict[int, str]:
    return {int(re.search(r"-seed(\d+)-", d.name).group(1)): (d / "log.txt").read_text()
            for d in out.iterdir() if d.is_dir()}


def test_a_sweep_survives_the_loss_of_its_worker_node_and_resumes_the_run_it_held(tmp_path, cluster, straight):
    storage = tmp_path / "storage"
    sweep = load_sweep(write_sweep(tmp_path, {}, zipped={"seed": [0, 1]}))
    worker = next(n for n in cluster.worker_nodes)
    killed, done = {}, threading.Event()

    def kill_worker_after_its_first_checkpoint():
        while not done.is_set():
            for name, run in stored_runs(storage).items():
                if run["completed"] and worker.node_id in run["log"]:
                    cluster.remove_node(worker, allow_graceful=False)
                    killed.update(name=name, completed=run["completed"])
                    return
            time.sleep(0.05)
    watcher = threading.Thread(target=kill_worker_after_its_first_checkpoint)
    watcher.start()
    try:
        counts = run_sweep(sweep, executor="ray", address=cluster.address, cpus_per_run=1, storage=str(storage))
    finally:
        done.set()
        watcher.join()
    assert killed and killed["completed"] < 3, "the run finished before its node was killed"
    assert counts == {"done": 2, "skipped": 0, "failed": 0}
    logs = run_logs(tmp_path / "out")
    log = logs[int(re.search(r"-seed(\d+)-", killed["name"]).group(1))]
    assert log.count(STARTED) == 2 and log.count(": starting") == 1     # begun once, resumed once
    assert f"resuming from the stored checkpoint after task {killed['completed']}" in log
    assert re.search(rf"resuming \S+ after task {killed['completed']}/3", log)
    assert worker.node_id not in log.split(": resuming from the stored checkpoint")[1]   # on the other node
    for s in (0, 1):
        results = json.loads(next((tmp_path / "out").glob(f"*-seed{s}-*")).joinpath("results.json").read_text())
        assert results["matrices"] == straight[s]


@pytest.mark.slow   # a minute: its three paths are each covered fast (a task resuming from storage, one
                    # returning a stored finished run, the store's skipping of completed runs in test_sweep)
def test_a_killed_driver_then_the_same_command_runs_every_run_exactly_once(tmp_path, cluster, straight):
    cluster.add_node(num_cpus=1)                  # three slots: every run starts at once
    cluster.wait_for_nodes()
    storage, out = tmp_path / "storage", tmp_path / "out"
    # seeds 0 and 1 as in the straight runs; seed 2 a one-epoch run that finishes first
    path = write_sweep(tmp_path, {}, zipped={"seed": [0, 1, 2], "train.epochs": [EPOCHS, EPOCHS, 1]})
    command = [sys.executable, "-m", "forgetlab.cli", "sweep", str(path), "--executor", "ray",
               "--address", cluster.address, "--cpus-per-run", "1", "--storage", str(storage)]
    db = out / "forgetlab.db"
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline:                 # seed 2 recorded, seeds 0 and 1 checkpointed mid-run
        checkpointed = [n for n, r in stored_runs(storage).items() if r["completed"]]
        if len(checkpointed) == 2 and db.is_file() and Store(db).runs(status="completed"):
            break
        time.sleep(0.05)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    interrupted = {n: r["completed"] for n, r in stored_runs(storage).items() if r["completed"]}
    assert len(interrupted) == 2 and all(k < 3 for k in interrupted.values()), interrupted
    short = Store(db).runs(status="completed")
    assert [r["seed"] for r in short] == [2]
    with sqlite3.connect(db) as conn:             # as if the driver had died before recording it
        conn.execute("DELETE FROM runs WHERE run_id = ?", (short[0]["run_id"],))
    time.sleep(1.0)                               # Ray ends the dead driver's tasks

    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "3 done, 0 skipped, 0 failed" in again.stdout
    runs = Store(db).runs()
    assert sorted((r["seed"], r["status"]) for r in runs) == [(0, "completed"), (1, "completed"), (2, "completed")]
    assert next(r["run_id"] for r in runs if r["seed"] == 2) == short[0]["run_id"]     # from storage, not run again
    logs = run_logs(out)
    assert logs[2].count(STARTED) == 1
    for seed in (0, 1):                           # begun once, resumed once, the straight run's numbers
        assert logs[seed].count(STARTED) == 2 and logs[seed].count(": starting") == 1, logs[seed]
        assert "resuming from the stored checkpoint after task" in logs[seed]
        assert json.loads(next(out.glob(f"*-seed{seed}-*")).joinpath("results.json").read_text())["matrices"] == straight[seed]
