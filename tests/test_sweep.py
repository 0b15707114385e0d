"""Sweeps (a grid run in processes, resumable through the store) and the comparison report's statistics."""
from __future__ import annotations

import sys

import pytest
import yaml
from conftest import tiny_config

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


def write_sweep(tmp_path, grid, base=None) -> str:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base or tiny_config(data={"max_tasks": 2})))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "base": "base.yaml", "grid": grid, "out": str(tmp_path / "out")}))
    return path


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
