"""The comparison report and export: filters, groups, CIs, paired tests, mean matrices, escaping; columns
from the runs' matrices; intransigence against the joint run on the same stream."""
from __future__ import annotations

import csv
import io
import json
import sys

import pytest
from scipy import stats

from forgetlab.cli import main
from forgetlab.errors import UserError
from forgetlab.report.compare import write_comparison
from forgetlab.report.summary import (check_where, columns_for, format_cell, incremental_curve, markdown_table, matches,
                                      mean_matrix, paired_test, paired_tests, parse_where, summarize, with_intransigence)
from forgetlab.store import Store


def fake_run(name: str, seed: int, acc: float, method: str = "seq", order_seed: int = 0, tasks=("a", "b")) -> dict:
    R = [[acc + 0.2, 0.0], [acc - 0.1, acc + 0.1]]          # final mean = acc; task 0 dropped by 0.3
    return {"run_id": f"{name}-{seed}-{order_seed}", "status": "completed", "tasks": list(tasks),
            "config": {"name": name, "seed": seed, "method": {"name": method}, "data": {"order_seed": order_seed}},
            "accuracy_matrix": R, "metrics": {"acc": acc, "forgetting": 0.3}, "timing": {"total_s": 3.0, "eval_s": 1.0}}


def test_paired_test_matches_a_hand_computation():
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 3.4641, df 2
    out = paired_test([0.6, 0.7, 0.8], [0.5, 0.5, 0.5])
    assert out["n"] == 3 and out["diff"] == pytest.approx(0.2)
    assert out["t"] == pytest.approx(2 * 3 ** 0.5, rel=1e-9)
    # two-sided p from the t(2) CDF in closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    t = 2 * 3 ** 0.5
    assert out["p"] == pytest.approx(2 * (0.5 - t / (2 * (2 + t * t) ** 0.5)), rel=1e-9)
    assert out["p"] == pytest.approx(stats.ttest_rel([0.6, 0.7, 0.8], [0.5, 0.5, 0.5]).pvalue, rel=1e-9)
    assert out["ci"] == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / 3 ** 0.5, rel=1e-6)
    same = paired_test([0.5, 0.6], [0.4, 0.5])              # equal differences: no t, no p
    assert same["diff"] == pytest.approx(0.1) and same["t"] is None and same["p"] is None


def test_pairs_match_on_seed_and_order_not_on_position():
    runs = [fake_run("seq", 0, 0.2), fake_run("seq", 1, 0.3), fake_run("seq", 2, 0.9),
            fake_run("ewc", 1, 0.5), fake_run("ewc", 0, 0.3), fake_run("ewc", 0, 0.9, order_seed=1)]
    rows = summarize(runs)
    [test] = paired_tests(rows)
    assert (test["a"], test["b"], test["n"]) == ("seq", "ewc", 2)   # seeds 0 and 1 with order 0 only
    assert test["diff"] == pytest.approx(((0.2 - 0.3) + (0.3 - 0.5)) / 2)


def test_where_and_group_by_several_keys():
    runs = [fake_run("a", 0, 0.1, method="seq"), fake_run("b", 1, 0.2, method="ewc"), fake_run("b", 2, 0.4, "ewc")]
    where = parse_where(["method.name=ewc", "seed=2"])
    assert where == {"method.name": "ewc", "seed": 2}
    assert [r["run_id"] for r in runs if matches(r, where)] == ["b-2-0"]
    rows = summarize(runs, ["method.name", "seed"])
    assert [r["group"] for r in rows] == ["seq · 0", "ewc · 1", "ewc · 2"]
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        parse_where(["seed"])


def test_mean_matrix_and_incremental_curve():
    members = [fake_run("s", 0, 0.2), fake_run("s", 1, 0.4)]
    assert sum(mean_matrix(members), []) == pytest.approx([0.5, 0.0, 0.2, 0.4])
    (m1, c1), (m2, c2) = incremental_curve(members)   # after task 1: R[0,0]; after 2: mean(R[1,:2]) = acc
    assert (m1, m2) == (pytest.approx(0.5), pytest.approx(0.3))
    assert c2 == pytest.approx(stats.t.ppf(0.975, 1) * (0.1 * 2 ** 0.5) / 2 ** 0.5)


def test_comparison_page_escapes_text_and_shows_every_section(tmp_path):
    evil = "<script>alert(1)</script>"
    runs = [fake_run(evil, s, 0.2 + 0.1 * s, tasks=(evil, "b")) for s in range(3)]
    runs += [fake_run("replay", s, 0.6 + 0.05 * s) for s in range(3)]
    path = tmp_path / "c.html"
    table = write_comparison(runs, path)
    page = path.read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1                     # only the page's own sorting script
    for section in ("Summary", "Paired tests", "Mean accuracy matrices", "Runs"):
        assert f"<h2>{section}</h2>" in page
    assert page.count("data:image/png;base64,") == 3 + 2   # acc, forgetting, curves; one mean R per group
    assert "| replay | 3 | 0.6500 ± " in table


def test_cli_report_and_export_filter_and_group(tmp_path, monkeypatch, capsys):
    db = tmp_path / "s.db"
    store = Store(db)
    for r in [fake_run("seq", 0, 0.2), fake_run("seq", 1, 0.4), fake_run("ewc", 0, 0.5, "ewc"),
              fake_run("ewc", 1, 0.7, "ewc")]:
        store.begin(r["run_id"], r["run_id"], {**r["config"], "data": {"name": "d", "scenario": "class_incremental"},
                                               "backbone": {"name": "m"}}, str(tmp_path / r["run_id"]))
        store.complete(r["run_id"], r)

    def cli(*args) -> str:
        monkeypatch.setattr(sys, "argv", ["forgetlab", *args])
        with pytest.raises(SystemExit) as info:
            main()
        assert info.value.code in (0, None)
        return capsys.readouterr().out

    rows = list(csv.DictReader(io.StringIO(cli("export", "--store", str(db), "--group-by", "name"))))
    assert [(r["group"], r["n"], r["seeds"]) for r in rows] == [("seq", "2", "0 1"), ("ewc", "2", "0 1")]
    assert float(rows[1]["acc"]) == pytest.approx(0.6)
    assert float(rows[1]["acc ci95"]) == pytest.approx(stats.t.ppf(0.975, 1) * (0.1 * 2 ** 0.5) / 2 ** 0.5)
    summary = json.loads(cli("export", "--store", str(db), "--group-by", "name", "--format", "json"))
    assert summary["paired_tests"][0]["diff"] == pytest.approx(-0.3)
    per_run = list(csv.DictReader(io.StringIO(cli("export", "--store", str(db), "--where", "method.name=ewc"))))
    assert sorted(r["run_id"] for r in per_run) == ["ewc-0-0", "ewc-1-0"]
    table = cli("report", "--store", str(db), "--where", "seed=1", "-o", str(tmp_path / "r.html"))
    assert "| seq | 1 | 0.4000 |" in table and "| ewc | 1 | 0.7000 |" in table
    monkeypatch.setattr(sys, "argv", ["forgetlab", "report", "--store", str(db), "--where", "seed=7"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2 and "no completed runs match --where" in capsys.readouterr().err


def test_repeated_replicates_in_a_group_count_once_as_their_mean_and_where_compares_numbers():
    # group "seq" ran seed 0 twice (e.g. two learning rates): its seed-0 value is their mean
    runs = [fake_run("seq", 0, 0.2), fake_run("seq", 0, 0.4), fake_run("seq", 1, 0.5),
            fake_run("ewc", 0, 0.6), fake_run("ewc", 1, 0.9)]
    [test] = paired_tests(summarize(runs))
    assert test["n"] == 2 and test["diff"] == pytest.approx(((0.3 - 0.6) + (0.5 - 0.9)) / 2)
    run = fake_run("x", 0, 0.1)
    run["config"]["train"] = {"lr": 0.001}
    assert matches(run, parse_where(["train.lr=1e-3"])) and not matches(run, parse_where(["train.lr=1e-2"]))
    with pytest.raises(UserError, match="--where train.lrr: no run has this key"):
        check_where([run], {"train.lrr": 1})


# -- columns from the runs' matrices ---------------------------------------------------------------
def _titles(runs) -> list[str]:
    return [t for _, t, _ in columns_for(runs)]


def test_columns_come_from_the_matrices_every_run_has():
    from test_report import _older_lm, _with_rouge

    rouge = _with_rouge()
    assert _titles([rouge]) == ["acc", "bwt", "rouge", "bwt rouge", "train s", "peak RSS MiB"]
    assert _titles([rouge, fake_run("x", 0, 0.5)]) == ["acc", "bwt", "forgetting", "train s", "peak RSS MiB"]
    lm = {**_older_lm(), "retention": {"perplexity_ratio": 1.5}}
    columns = columns_for([lm])
    assert [t for _, t, _ in columns] == ["acc", "bwt", "forgetting", "learning acc", "ppl", "bwt nll", "forgetting nll",
                                          "learning ppl", "general ppl after/before", "train s", "peak RSS MiB"]
    assert [(p, d) for p, t, d in columns if t in ("ppl", "bwt nll")] == [("metrics.ppl", 2), ("metrics.bwt_nll", 4)]
    table = markdown_table(summarize([rouge]))
    assert table.startswith("| method | n | acc | bwt | rouge | bwt rouge | train s | peak RSS MiB |")
    assert "| seq | 1 | 0.7000 | -0.3000 | 0.3750 | -0.2000 | 2.0 | – |" in table


# -- intransigence against the joint run on the same stream and replicate --------------------------
def _pair():
    """A joint run and a sequential one with the same config but for method, name and log."""
    config = {"seed": 0, "data": {"name": "d", "scenario": "class_incremental"}, "backbone": {"name": "m"},
              "train": {"lr": 0.01}}
    joint = {"run_id": "joint-0", "status": "completed", "tasks": ["a", "b"],
             "config": {**config, "name": "joint", "method": {"name": "joint"}, "log": {"tensorboard": True}},
             "accuracy_matrix": [[0.9, 0.0], [0.85, 0.88]], "metrics": {"acc": 0.865, "intransigence": None}}
    seq = {"run_id": "seq-0", "status": "completed", "tasks": ["a", "b"],
           "config": {**config, "name": "seq", "method": {"name": "seq"}},
           "accuracy_matrix": [[0.8, 0.0], [0.3, 0.7]], "metrics": {"acc": 0.5, "intransigence": None}}
    return joint, seq


def test_intransigence_is_measured_against_the_matching_joint_run():
    joint, seq = _pair()
    other = {**seq, "run_id": "seq-lr", "config": {**seq["config"], "name": "seq-lr", "train": {"lr": 0.1}}}
    runs = with_intransigence([joint, seq, other], [joint, seq, other])
    # R*[j] = joint R[j, j] = (0.9, 0.88); seq R[j, j] = (0.8, 0.7): ((0.9 - 0.8) + (0.88 - 0.7)) / 2 = 0.14
    assert runs[1]["metrics"]["intransigence"] == pytest.approx(0.14)
    assert runs[0]["metrics"]["intransigence"] == pytest.approx(0.0)
    assert runs[2]["metrics"]["intransigence"] is None          # another learning rate: no joint run
    assert seq["metrics"]["intransigence"] is None               # the runs given are left as they were
    rows = summarize(runs)
    assert "intransigence" in _titles(runs)
    assert [format_cell(*r["intransigence"], 4) for r in rows] == ["0.0000", "0.1400", "–"]
    assert "intransigence" not in _titles([seq, other]) and "intransigence" not in _titles(with_intransigence([seq], [seq]))


def test_comparison_and_export_find_the_joint_run_outside_the_selection(tmp_path, monkeypatch, capsys):
    joint, seq = _pair()
    table = write_comparison([seq], tmp_path / "c.html", references=[joint, seq])
    assert "| intransigence |" in table.splitlines()[0] and "| 0.1400 |" in table
    assert "intransigence" not in write_comparison([seq], tmp_path / "d.html")
    db = tmp_path / "s.db"
    store = Store(db)
    for r in (joint, seq):
        store.begin(r["run_id"], r["run_id"], r["config"], str(tmp_path / r["run_id"]))
        store.complete(r["run_id"], r)
    monkeypatch.setattr(sys, "argv", ["forgetlab", "export", "--store", str(db), "--group-by", "name",
                                      "--where", "method.name=seq"])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    [row] = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert row["group"] == "seq" and float(row["intransigence"]) == pytest.approx(0.14)
