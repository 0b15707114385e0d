"""The SQLite store: round-trips, ordering, export and concurrent writers."""

import csv
import io
import json
from pathlib import Path
import multiprocessing
import sqlite3

import pytest

from forgetlab.store import SCHEMA_VERSION, Store


def _config(method="seq", seed=0, **data):
    return {
        "seed": seed,
        "backbone": {"name": "tiny-encoder"},
        "data": {"name": "clinc150", "scenario": "class_incremental", **data},
        "method": {"name": method},
    }


def _results(run_id, acc, bwt=None):
    return {"run_id": run_id, "status": "completed", "tasks": ["a", "b"],
            "metrics": {"acc": acc, "bwt": bwt, "fwt": 0.125}}


def test_begin_complete_fail_round_trip(tmp_path):
    store = Store(tmp_path / "sub" / "runs.db")
    store.begin("r1", "h1", _config(method="ewc", seed=3), "out/r1")
    run = store.get("r1")
    assert run["status"] == "running"
    assert (run["method"], run["dataset"], run["scenario"], run["backbone"], run["seed"]) == (
        "ewc", "clinc150", "class_incremental", "tiny-encoder", 3)
    assert run["config"] == _config(method="ewc", seed=3)
    assert run["metrics"] is None and run["results"] is None and run["finished"] is None

    results = _results("r1", 0.75, -0.25)
    store.complete("r1", results)
    run = store.get("r1")
    assert run["status"] == "completed"
    assert run["metrics"] == results["metrics"]
    assert run["results"] == results
    assert run["finished"] is not None

    store.begin("r2", "h2", _config(), "out/r2")
    store.fail("r2", "Traceback: boom")
    run = store.get("r2")
    assert run["status"] == "failed" and run["error"] == "Traceback: boom"
    assert store.get("missing") is None
    assert store.completed_hashes() == {"h1"}
    with pytest.raises(KeyError):
        store.complete("missing", results)


def test_dataset_column_falls_back_to_path_and_sequence(tmp_path):
    store = Store(tmp_path / "runs.db")
    by_path = _config()
    by_path["data"] = {"path": "data/local", "scenario": "domain_incremental"}
    by_seq = _config()
    by_seq["data"] = {"sequence": ["agnews", "yelp"], "scenario": "task_incremental"}
    by_seq["backbone"] = {"arch": "gpt2-small"}
    store.begin("p", "h", by_path, "out/p")
    store.begin("s", "h", by_seq, "out/s")
    assert store.get("p")["dataset"] == "data/local"
    assert (store.get("s")["dataset"], store.get("s")["backbone"]) == ("agnews+yelp", "gpt2-small")


def test_runs_newest_first_and_filtered(tmp_path):
    store = Store(tmp_path / "runs.db")
    for i in range(4):
        store.begin(f"r{i}", f"h{i}", _config(seed=i), f"out/{i}")
    store.complete("r1", _results("r1", 0.5))
    store.complete("r3", _results("r3", 0.9))
    store.fail("r2", "oom")
    assert [r["run_id"] for r in store.runs()] == ["r3", "r2", "r1", "r0"]
    assert [r["run_id"] for r in store.runs("completed")] == ["r3", "r1"]
    assert [r["run_id"] for r in store.runs("failed")] == ["r2"]
    assert [r["run_id"] for r in store.runs("running")] == ["r0"]
    assert "results" not in store.runs()[0]

    store.begin("r0", "h0", _config(seed=0), "out/0")  # a resumed run becomes the newest
    assert store.runs()[0]["run_id"] == "r0"
    assert len(store.runs()) == 4


def test_export_csv_and_json(tmp_path):
    store = Store(tmp_path / "runs.db")
    store.begin("a", "ha", _config(method="replay", seed=1), "out/a")
    store.complete("a", _results("a", 0.123456789, -0.0625))
    store.begin("b", "hb", _config(method="lwf", seed=2), "out/b")
    store.fail("b", "boom")

    rows = list(csv.DictReader(io.StringIO(store.export("csv"))))
    assert [r["run_id"] for r in rows] == ["b", "a"]
    a = rows[1]
    assert (a["status"], a["method"], a["seed"], a["config_hash"], a["out_dir"]) == (
        "completed", "replay", "1", "ha", str(Path("out/a").resolve()))     # directories stored absolute
    assert float(a["acc"]) == 0.123456789
    assert float(a["bwt"]) == -0.0625
    assert float(a["fwt"]) == 0.125
    assert rows[0]["acc"] == ""

    exported = json.loads(store.export("json"))
    assert [r["run_id"] for r in exported] == ["b", "a"]
    assert exported[1]["results"] == _results("a", 0.123456789, -0.0625)
    with pytest.raises(ValueError):
        store.export("xml")


def test_schema_version_and_wal(tmp_path):
    Store(tmp_path / "runs.db")
    conn = sqlite3.connect(tmp_path / "runs.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def _write_runs(path, worker, n):
    store = Store(path)
    for i in range(n):
        run_id = f"w{worker}-{i}"
        store.begin(run_id, f"hash-{run_id}", _config(seed=i), f"out/{run_id}")
        store.complete(run_id, _results(run_id, i / n))


def test_two_processes_write_concurrently(tmp_path):
    path = tmp_path / "shared.db"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_runs, args=(str(path), w, 50)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0

    store = Store(path)
    runs = store.runs()
    assert len(runs) == 100
    assert all(r["status"] == "completed" for r in runs)
    assert len(store.completed_hashes()) == 100
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_a_run_directory_holds_one_row_however_it_is_spelled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store(tmp_path / "s.db")
    store.begin("old", "h", _config(), "runs/x")                        # killed before its first checkpoint
    store.begin("new", "h", _config(), str(tmp_path / "runs" / "x"))    # the same directory, run again
    assert [r["run_id"] for r in store.runs()] == ["new"]
    assert store.for_dir("./runs/x")["run_id"] == "new"
