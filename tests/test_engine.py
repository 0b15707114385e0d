"""End-to-end runs on a nano model: the results contract, determinism, resume, methods' mechanics."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import forgetlab
from forgetlab.methods import Method
from forgetlab.methods.seq_star import SeqStar
from forgetlab.store import Store
from conftest import tiny_config


def test_results_contract_outputs_and_store(tmp_path):
    res = forgetlab.run(tiny_config(), out=tmp_path / "run")
    raw = json.loads((tmp_path / "run" / "results.json").read_text())
    assert raw["status"] == "completed" and raw["scenario"] == "class_incremental"
    assert raw["tasks"] == ["task0", "task1", "task2"]
    R = np.array(raw["accuracy_matrix"])
    assert R.shape == (3, 3) and ((0 <= R) & (R <= 1)).all()
    assert np.array_equal(res.accuracy_matrix, R)
    # class-incremental with a growing head: unseen tasks' classes cannot be predicted yet
    assert R[0, 1] == R[0, 2] == R[1, 2] == 0.0
    assert raw["metrics"]["acc"] == pytest.approx(R[-1].mean())
    assert raw["environment"]["seed"] == 0 and raw["environment"]["torch"] == torch.__version__
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"] == {"name": "seq", "replay": None, "retrieval": None}
    assert "<img" in (tmp_path / "run" / "report.html").read_text()
    [row] = Store(tmp_path / "forgetlab.db").runs()
    assert row["status"] == "completed" and row["metrics"]["acc"] == raw["metrics"]["acc"]


def test_same_seed_same_matrix_other_seed_other_matrix(tmp_path):
    a = forgetlab.run(tiny_config(), out=tmp_path / "a").accuracy_matrix
    b = forgetlab.run(tiny_config(), out=tmp_path / "b").accuracy_matrix
    c = forgetlab.run(tiny_config(seed=1), out=tmp_path / "c").accuracy_matrix
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_task_incremental_evaluates_unseen_tasks_and_gives_fwt(tmp_path):
    res = forgetlab.run(tiny_config(data={"scenario": "task_incremental"}), out=tmp_path / "til")
    R = res.accuracy_matrix
    assert R[0, 1] > 0 and R[0, 2] > 0                 # 5-way chance on unseen tasks is 0.2
    b = res.raw["baseline_accuracy"]
    assert res.metrics["fwt"] == pytest.approx(((R[0, 1] - b[1]) + (R[1, 2] - b[2])) / 2)


def test_freeze_keeps_the_backbone_and_trains_the_head(tmp_path):
    forgetlab.run(tiny_config(method={"name": "freeze"}), out=tmp_path / "f")
    ckpt = tmp_path / "f" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["files"]["backbone"] == "backbone-0.safetensors"   # written once: never changed
    assert all(n.startswith("backbone.") for n in state["frozen"])


def test_seq_star_freezes_backbone_after_warmup_and_old_rows(tmp_path):
    cfg = tiny_config(method={"name": "seq_star", "warmup": True})
    forgetlab.run(cfg, out=tmp_path / "s", resume=False)
    forgetlab.run(cfg, out=tmp_path / "s2")    # second run: reuse the cache
    ckpt = tmp_path / "s" / "checkpoint"
    state = json.loads((ckpt / "state.json").read_text())
    assert state["files"]["backbone"] == "backbone-0.safetensors"   # trained in task 0 only
    frozen = set(state["frozen"])
    assert {"head.weights.0", "head.weights.1"} <= frozen and "head.weights.2" not in frozen
    assert json.loads((tmp_path / "s" / "results.json").read_text())["config"]["method"]["cosine"] is True


class RecordingSeqStar(SeqStar):
    """SEQ* that keeps a copy of task 0's classifier rows after every task."""
    name = "test_seq_star_recording"
    snapshots: list = []

    def after_task(self, task):
        RecordingSeqStar.snapshots.append(self.learner.head.weights[0].detach().clone())


def test_seq_star_keeps_old_classifier_rows_bit_identical(tmp_path):
    RecordingSeqStar.snapshots.clear()
    forgetlab.run(tiny_config(method={"name": "test_seq_star_recording", "warmup": False}), out=tmp_path / "r")
    first, *later = RecordingSeqStar.snapshots
    assert len(later) == 2 and all(torch.equal(first, w) for w in later)


def test_frozen_features_are_cached_across_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLAB_CACHE_DIR", str(tmp_path / "cache"))
    cfg = tiny_config(method={"name": "seq_star", "warmup": False})
    first = forgetlab.run(cfg, out=tmp_path / "a")
    shards = sorted((tmp_path / "cache" / "features").rglob("*.safetensors"))
    assert len(shards) == 1
    n_texts = 3 * 5 * (8 + 4)
    assert load_file(shards[0])["keys"].shape[0] == n_texts
    second = forgetlab.run(cfg, out=tmp_path / "b")
    assert sorted((tmp_path / "cache" / "features").rglob("*.safetensors")) == shards   # nothing re-encoded
    assert np.array_equal(first.accuracy_matrix, second.accuracy_matrix)


def test_joint_trains_on_every_task_seen_so_far(tmp_path):
    res = forgetlab.run(tiny_config(method={"name": "joint"}), out=tmp_path / "j")
    per_task = 5 * 8
    assert [e["examples"] for e in res.raw["task_log"]] == [per_task, 2 * per_task, 3 * per_task]


class Exploding(Method):
    """A method that fails after its second task, to check that failed runs are marked failed."""
    name = "test_exploding"

    def after_task(self, task):
        if task.index == 1:
            raise RuntimeError("boom")


def test_a_failing_run_is_marked_failed_never_completed(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        forgetlab.run(tiny_config(method={"name": "test_exploding"}), out=tmp_path / "x")
    raw = json.loads((tmp_path / "x" / "results.json").read_text())
    assert raw["status"] == "failed" and "boom" in raw["error"]
    [row] = Store(tmp_path / "forgetlab.db").runs()
    assert row["status"] == "failed" and "boom" in row["error"]
    with pytest.raises(forgetlab.errors.UserError):
        forgetlab.load(tmp_path / "x")


def test_resume_after_kill_9_gives_the_same_matrix(tmp_path):
    cfg = tiny_config(backbone={"size": "tiny"}, data={"max_tasks": 10, "max_train_per_class": 30})
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "forgetlab.cli", "run", str(config), "--out", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    state = run_dir / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text())["completed"] >= 2:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    completed = json.loads(state.read_text())["completed"]
    assert 2 <= completed < 10, "the run must be killed part-way"
    assert not (run_dir / "results.json").exists()
    assert Store(tmp_path / "forgetlab.db").runs()[0]["status"] == "running"   # never shown as completed

    resumed = forgetlab.run(config, out=run_dir, resume=True)
    straight = forgetlab.run(config, out=tmp_path / "straight")
    assert np.array_equal(resumed.accuracy_matrix, straight.accuracy_matrix)
    assert resumed.raw["run_id"] == json.loads(state.read_text())["run_id"]
    assert [r["status"] for r in Store(tmp_path / "forgetlab.db").runs()] == ["completed", "completed"]
