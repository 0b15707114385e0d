"""Sweeps (a grid run in processes, resumable through the store) and the comparison report's statistics."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml
from conftest import needs_data, tiny_config

from forgetlab.cli import main
from forgetlab.errors import UserError
from forgetlab.report.summary import markdown_table, mean_ci, summarize
from forgetlab.store import Store
from forgetlab.sweep import load_sweep, run_sweep


def test_mean_ci_is_the_student_t_half_width():
    mean, ci = mean_ci([1.0, 2.0, 3.0])           # sd 1, n 3, t(0.975, 2) = 4.302653
    assert mean == 2.0 and ci == pytest.approx(4.302653 / 3 ** 0.5, rel=1e-6)
    assert mean_ci([0.5]) == (0.5, None) and mean_ci([]) == (None, None)


def test_summarize_groups_seeds_of_a_grid_point():
    runs = [{"config": {"name": n, "seed": s, "method": {"name": n}}, "metrics": {"acc": a, "bwt": -a},
             "timing": {"total_s": 12.0, "eval_s": 2.0}} for n, s, a in [("seq", 0, 0.1), ("seq", 1, 0.3), ("replay", 0, 0.5)]]
    rows = summarize(runs)
    assert [(r["group"], r["n"], r["seeds"]) for r in rows] == [("seq", 2, [0, 1]), ("replay", 1, [0])]
    assert rows[0]["acc"][0] == pytest.approx(0.2) and rows[0]["acc"][1] == pytest.approx(12.706205 * 0.1, rel=1e-6)
    assert rows[0]["train s"] == (10.0, 0.0)
    table = markdown_table(rows)
    assert "| seq | 2 | 0.2000 ± " in table and "| replay | 1 | 0.5000 |" in table


def write_sweep(tmp_path, grid, base=None, zipped=None, out="out") -> str:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or tiny_config(data={"max_tasks": 2})))
    path = tmp_path / f"sweep-{out}.yaml"
    spec = {"name": "t", "base": "base.yaml", "grid": grid, "out": str(tmp_path / out)}
    if zipped:
        spec["zip"] = zipped
    path.write_text(yaml.safe_dump(spec))
    return path


def by_grid_point(db) -> dict:
    return {(r["config"]["name"], r["seed"]): r["metrics"] for r in Store(db).completed()}


def test_sweep_runs_every_grid_point_once_and_resumes(tmp_path, monkeypatch, capsys):
    path = write_sweep(tmp_path, {"method": [{"name": "seq"}, {"name": "replay", "replay": {"size": 4}}],
                                  "seed": [0, 1]})
    sweep = load_sweep(path)
    assert [(r.label, r.config.seed) for r in sweep.runs] == [
        ("seq", 0), ("seq", 1), ("replay(replay.size=4)", 0), ("replay(replay.size=4)", 1)]
    assert run_sweep(sweep, workers=2) == {"done": 4, "skipped": 0, "failed": 0}
    db = tmp_path / "out" / "forgetlab.db"
    assert len(Store(db).runs(status="completed")) == 4
    assert run_sweep(load_sweep(path)) == {"done": 0, "skipped": 4, "failed": 0}   # each run stored once
    assert len(Store(db).runs()) == 4

    monkeypatch.setattr(sys, "argv", ["forgetlab", "report", "--store", str(db), "--markdown", str(tmp_path / "t.md")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    table = (tmp_path / "t.md").read_text()
    assert table in capsys.readouterr().out
    assert "| seq | 2 | " in table and len(table.strip().splitlines()) == 4
    assert (tmp_path / "out" / "comparison.html").is_file()


def test_bad_sweep_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="grid: expected"):
        load_sweep(write_sweep(tmp_path, {"seed": 0}))
    with pytest.raises(UserError, match=r"grid point .*method.lam"):
        load_sweep(write_sweep(tmp_path, {"method": [{"name": "ewc", "lam": -1}]}))


def test_zip_pairs_its_lists_and_labels_leave_out_seeds_and_orders(tmp_path):
    sweep = load_sweep(write_sweep(tmp_path, {"method": [{"name": "seq"}, {"name": "lwf"}]},
                                   zipped={"seed": [0, 1, 2], "data.order_seed": [5, 6, 7]}))
    assert [(r.label, r.config.seed, r.config.data.order_seed) for r in sweep.runs] == [
        ("seq", 0, 5), ("seq", 1, 6), ("seq", 2, 7), ("lwf", 0, 5), ("lwf", 1, 6), ("lwf", 2, 7)]
    with pytest.raises(UserError, match="zip: the lists must have one length"):
        load_sweep(write_sweep(tmp_path, {}, zipped={"seed": [0, 1], "data.order_seed": [0]}))
    with pytest.raises(UserError, match="two grid points give the same config"):
        load_sweep(write_sweep(tmp_path, {"seed": [1, 1]}))


@needs_data("clinc150")
def test_a_failing_run_is_recorded_and_does_not_stop_the_others(tmp_path):
    path = write_sweep(tmp_path, {"data.classes_per_task": [5, 7]})        # 150 classes: 7 fails when run
    assert run_sweep(load_sweep(path), workers=2) == {"done": 1, "skipped": 0, "failed": 1}
    runs = Store(tmp_path / "out" / "forgetlab.db").runs()
    assert sorted(r["status"] for r in runs) == ["completed", "failed"]
    failed = next(r for r in runs if r["status"] == "failed")
    assert failed["error"].startswith("exit 2: error: data.classes_per_task: 150 classes do not divide")
    # a rerun retries only the failed point, and its directory keeps one row
    assert run_sweep(load_sweep(path)) == {"done": 0, "skipped": 1, "failed": 1}
    assert len(Store(tmp_path / "out" / "forgetlab.db").runs()) == 2


def test_a_sweep_killed_part_way_finishes_on_a_rerun_with_each_run_stored_once(tmp_path):
    path = write_sweep(tmp_path, {"method": [{"name": "seq"}, {"name": "replay", "replay": {"size": 4}}],
                                  "seed": [0, 1]}, base=tiny_config(data={"max_tasks": 3}))
    db = tmp_path / "out" / "forgetlab.db"
    driver = subprocess.Popen([sys.executable, "-m", "forgetlab.cli", "sweep", str(path), "--workers", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (db.is_file() and Store(db).runs(status="completed")):
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)                  # part-way: one run done, others running or queued
    driver.wait()
    time.sleep(1.0)                                      # its runs die with it
    store = Store(db)
    finished = len(store.runs(status="completed"))
    assert 1 <= finished < 4
    assert run_sweep(load_sweep(path), workers=2) == {"done": 4 - finished, "skipped": finished, "failed": 0}
    runs = store.runs()
    assert len(runs) == 4 and all(r["status"] == "completed" for r in runs)
    assert len({r["config_hash"] for r in runs}) == 4
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_two_runs_at_once_share_one_store(tmp_path):
    db = tmp_path / "shared.db"
    procs = []
    for seed in (0, 1):
        cfg = tmp_path / f"c{seed}.yaml"
        cfg.write_text(yaml.safe_dump(tiny_config(seed=seed, data={"max_tasks": 2})))
        procs.append(subprocess.Popen([sys.executable, "-m", "forgetlab.cli", "run", str(cfg), "--out",
                                       str(tmp_path / f"run{seed}"), "--store", str(db)], stdout=subprocess.DEVNULL))
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    runs = Store(db).runs()
    assert sorted((r["seed"], r["status"]) for r in runs) == [(0, "completed"), (1, "completed")]
    for seed in (0, 1):
        stored = next(r for r in runs if r["seed"] == seed)["metrics"]
        assert stored == json.loads((tmp_path / f"run{seed}" / "results.json").read_text())["metrics"]
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_ray_executor_gives_the_local_executors_numbers(tmp_path, capsys):
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'forgetlab[ray]')")
    grid = {"method": [{"name": "seq"}, {"name": "replay", "replay": {"size": 4}}]}
    local = load_sweep(write_sweep(tmp_path, grid, zipped={"seed": [0, 1]}, out="local"))
    remote = load_sweep(write_sweep(tmp_path, grid, zipped={"seed": [0, 1]}, out="ray"))
    assert run_sweep(local, workers=2, threads=1) == {"done": 4, "skipped": 0, "failed": 0}
    assert run_sweep(remote, executor="ray", threads=1) == {"done": 4, "skipped": 0, "failed": 0}
    assert by_grid_point(tmp_path / "ray" / "forgetlab.db") == by_grid_point(tmp_path / "local" / "forgetlab.db")
    for run in remote.runs:                               # run directories came back to the driver
        results = json.loads((tmp_path / "ray" / next(p.name for p in (tmp_path / "ray").iterdir()
                                                         if p.name.endswith(run.config.hash()[:8])) / "results.json").read_text())
        assert results["status"] == "completed"
    assert run_sweep(remote, executor="ray") == {"done": 0, "skipped": 4, "failed": 0}
    assert not ray.is_initialized()                       # the sweep stopped the instance it started


def test_a_run_that_completed_is_kept_whatever_its_process_did_next(tmp_path):
    from forgetlab.sweep.jobs import Job, record_failure

    sweep = load_sweep(write_sweep(tmp_path, {"seed": [0]}))
    job = Job(sweep.runs[0].label, sweep.runs[0].config, tmp_path / "out" / "r")
    store = Store(tmp_path / "s.db")
    store.begin("r1", job.config.hash(), job.config.to_dict(), str(job.run_dir))
    store.fail("r1", "exit 1: first reason")
    record_failure(store, job, "exit 2: second reason")                 # a retry's error replaces the old one
    assert store.for_dir(job.run_dir)["error"] == "exit 2: second reason"
    store.begin("r2", job.config.hash(), job.config.to_dict(), str(job.run_dir))
    store.complete("r2", {"metrics": {"acc": 0.5}})
    record_failure(store, job, "killed by signal 9: ")                  # after completing: keep the result
    assert [(r["run_id"], r["status"]) for r in store.runs()] == [("r2", "completed")]
