"""A store as one table, a row per run: ``forgetlab export --format parquet`` and ``forgetlab.load_store``
give the same table, and every cell is the store's own value."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import tiny_config
from typer.testing import CliRunner

import forgetlab
from forgetlab.cli import app
from forgetlab.config import flatten
from forgetlab.errors import UserError
from forgetlab.kinds.classification import Classification
from forgetlab.store import Store

pd = pytest.importorskip("pandas")
pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two completed runs (seq seed 0, ewc seed 1) and one that failed after its baseline."""
    tmp = tmp_path_factory.mktemp("store")
    db = tmp / "runs.db"
    forgetlab.run(tiny_config(), out=tmp / "seq", store=db)
    forgetlab.run(tiny_config(seed=1, method={"name": "ewc"}), out=tmp / "ewc", store=db)
    real = Classification.evaluate

    def dies(self, method, seen, record=True):
        if seen:
            raise RuntimeError("killed")
        return real(self, method, seen, record)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Classification, "evaluate", dies)
        with pytest.raises(RuntimeError):
            forgetlab.run(tiny_config(seed=2), out=tmp / "failed", store=db)
    return db


def _same(cell, value) -> bool:
    """A cell (numpy arrays for lists, NaN/NaT/None for nulls) against the store's value."""
    if value is None:
        return cell is None or (not hasattr(cell, "__len__") and pd.isna(cell))
    if hasattr(cell, "tolist"):
        cell = [c.tolist() if hasattr(c, "tolist") else c for c in cell]
    return cell == value


def test_parquet_and_load_store_are_one_table_holding_the_stores_values(store, tmp_path):
    path = tmp_path / "runs.parquet"
    result = CliRunner().invoke(app, ["export", "--store", str(store), "--format", "parquet", "-o", str(path)])
    assert result.exit_code == 0, result.output
    frame = forgetlab.load_store(store)
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    runs = {run["run_id"]: run for run in Store(store).runs(full=True)}
    assert sorted(frame["status"]) == ["completed", "completed", "failed"] and set(frame["run_id"]) == set(runs)
    assert frame.columns[:12].tolist() == ["run_id", "status", "error", "created", "finished", "out_dir", "config_hash",
                                           "method", "dataset", "scenario", "backbone", "seed"]
    for _, row in frame.iterrows():
        run = runs[row["run_id"]]
        for key in ("status", "error", "out_dir", "config_hash", "method", "dataset", "scenario", "backbone", "seed"):
            assert _same(row[key], run[key]), key
        assert row["created"].isoformat() == run["created"]
        for key, value in flatten(run["config"]).items():
            assert _same(row[f"config.{key}"], value), key
        results = run["results"]
        if results is None:                                      # the failed run: its error, no numbers
            assert run["status"] == "failed" and "killed" in row["error"]
            assert all(pd.isna(row[c]) for c in frame.columns if c.startswith("metrics."))
            assert row["tasks"] is None and row["matrix.accuracy"] is None
            continue
        for key, value in results["metrics"].items():
            cell = row[f"metrics.{key}"]
            assert math.isnan(cell) if value is None else cell == value, key
        assert row["tasks"].tolist() == results["tasks"]
        for name, m in results["matrices"].items():
            assert [list(r) for r in row[f"matrix.{name}"]] == m["values"]
            assert row[f"baseline.{name}"].tolist() == m["baseline"]
    assert set(frame["method"]) == {"seq", "ewc"} and sorted(frame["seed"]) == [0, 1, 2]


def test_hugging_face_datasets_loads_the_parquet(store, tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "runs.parquet"
    assert CliRunner().invoke(app, ["export", "--store", str(store), "--format", "parquet", "-o", str(path)]).exit_code == 0
    loaded = datasets.Dataset.from_parquet(str(path))
    frame = forgetlab.load_store(store)
    assert loaded["run_id"] == frame["run_id"].tolist()
    assert loaded["matrix.accuracy"] == [None if m is None else [list(r) for r in m] for m in frame["matrix.accuracy"]]


def _hand_made(tmp_path, configs: list[dict]):
    """A store of completed runs with these configs and a one-number results each."""
    db = Store(tmp_path / "hand.db")
    for i, config in enumerate(configs):
        db.begin(f"r{i}", f"h{i}", config, str(tmp_path / f"r{i}"))
        db.complete(f"r{i}", {"metrics": {"acc": 0.5 + i}, "tasks": ["a"],
                              "matrices": {"accuracy": {"values": [[1]], "baseline": [0], "direction": "higher",
                                                        "metrics": {"acc": 0.5 + i}}}})
    return db.path


def test_a_config_key_of_mixed_types_is_its_json_text(tmp_path):
    base = {"seed": 0, "backbone": {"name": "gpt2"}, "data": {"name": "clinc150", "scenario": "class"},
            "method": {"name": "seq"}}
    configs = [{**base, "method": {"name": "seq", "weight": 3}}, {**base, "method": {"name": "seq", "weight": "auto"}},
               {**base, "method": {"name": "seq", "weight": 2.5, "layers": [1, 2]}}]
    db = _hand_made(tmp_path, configs)
    path = tmp_path / "mixed.parquet"
    assert CliRunner().invoke(app, ["export", "--store", str(db), "--format", "parquet", "-o", str(path)]).exit_code == 0
    frame = pd.read_parquet(path).set_index("run_id").sort_index()
    assert frame["config.method.weight"].tolist() == ["3", '"auto"', "2.5"]
    assert [json.loads(v) for v in frame["config.method.weight"]] == [3, "auto", 2.5]
    assert frame["config.method.layers"].isna().tolist()[:2] == [True, True]
    assert frame["config.method.layers"].iloc[2].tolist() == [1, 2]
    assert frame["matrix.accuracy"].iloc[0].tolist()[0].tolist() == [1.0]     # whole numbers stored as doubles
    assert frame["metrics.acc"].tolist() == [0.5, 1.5, 2.5]


def test_bad_format_no_output_and_a_missing_store_are_one_line(store, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "forgetlab.cli", "export", "--store", str(store), "--format", "xml"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --format: expected csv, json or parquet, got 'xml'"
    no_file = CliRunner().invoke(app, ["export", "--store", str(store), "--format", "parquet"])
    assert isinstance(no_file.exception, UserError) and "-o runs.parquet" in str(no_file.exception)
    with pytest.raises(UserError, match="store not found"):
        forgetlab.load_store(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()
