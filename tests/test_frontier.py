"""The learn–forget frontier of the comparison report: Pareto marking, each group's learning and drops
as means over its runs, variant curves in coefficient order, general ability from perplexity or the
accuracy probes, only panel (a) without a general-ability suite, escaping."""
from __future__ import annotations

import json
import sys

import pytest
from scipy import stats

from forgetlab.cli import main
from forgetlab.report.compare import write_comparison
from forgetlab.report.frontier import frontier_entries, frontier_panels, pareto
from forgetlab.report.summary import summarize
from forgetlab.store import Store

T1 = stats.t.ppf(0.975, 1)          # two runs: CI half-width = T1 * sd / sqrt(2)


def generated(a: float, b: float, c: float) -> dict:
    """A 2-task primary matrix R = [[a, 0], [b, c]]: learning (a + c) / 2, bwt b - a, score (b + c) / 2."""
    return {"values": [[a, 0.0], [b, c]], "baseline": None, "direction": "higher",
            "metrics": {"score": (b + c) / 2, "learning_score": (a + c) / 2, "bwt": b - a}}


def likelihood() -> dict:
    """A second matrix whose figures must not be read (the primary is the first)."""
    return {"values": [[0.9, 0.0], [0.9, 0.9]], "baseline": None, "direction": "higher",
            "metrics": {"likelihood": 0.9, "learning_likelihood": 0.9, "bwt_likelihood": 0.0}}


def run(name: str, seed: int, R: tuple, ratio: float | None = 1.1, variants: dict | None = None,
        resources: dict | None = None) -> dict:
    matrices = {"generated": generated(*R), "likelihood": likelihood()}
    return {"run_id": f"{name}-{seed}", "status": "completed", "tasks": ["a", "b"],
            "config": {"name": name, "seed": seed, "method": {"name": name}},
            "matrices": matrices, "metrics": {k: v for m in matrices.values() for k, v in m["metrics"].items()},
            "retention": None if ratio is None else {"perplexity_ratio": ratio, "probes": {}},
            "variants": variants, "timing": {"train_s": 10.0 + seed, "eval_s": 1.0, "total_s": 12.0 + seed},
            "resources": resources or {"peak_rss_mib": 100.0}}


def point(value: float, R: tuple, ratio: float) -> dict:
    matrices = {"generated": generated(*R)}
    return {"value": value, "matrices": matrices, "metrics": dict(matrices["generated"]["metrics"]),
            "retention": {"perplexity_ratio": ratio, "probes": {}}}


def by_label(entries: list[dict]) -> dict[str, dict]:
    return {e["label"]: e for e in entries}


def test_pareto_maximises_learning_and_minimises_the_drop():
    points = [(0.5, 0.1), (0.6, 0.2), (0.4, 0.3), (0.6, 0.3), (0.5, 0.1), (0.3, 0.0)]
    # (0.4, 0.3) is beaten on both; (0.6, 0.3) by (0.6, 0.2): equal learning, smaller drop;
    # equal points both stay; (0.3, 0.0) has the smallest drop
    assert pareto(points) == [True, True, False, False, True, True]
    assert pareto([]) == [] and pareto([(0.1, 0.9)]) == [True]


def test_a_group_is_the_mean_of_its_runs_on_the_primary_matrix():
    # seq: learning (0.8+0.6)/2 = 0.7 and (0.6+0.4)/2 = 0.5; bwt 0.5-0.8 = -0.3 and 0.5-0.6 = -0.1;
    # score (0.5+0.6)/2 = 0.55 and (0.5+0.4)/2 = 0.45; perplexity ratio 1.1 and 1.3
    runs = [run("seq", 0, (0.8, 0.5, 0.6), 1.1), run("seq", 1, (0.6, 0.5, 0.4), 1.3),
            run("lora", 0, (0.5, 0.5, 0.5), 1.0, resources={"trainable_parameters": 1000, "method_state_mib": 2.5})]
    seq, lora = frontier_entries(summarize(runs))
    assert (seq["label"], seq["n"]) == ("seq", 2)
    assert seq["learning"] == pytest.approx(0.6) and seq["learning_ci"] == pytest.approx(T1 * 0.1)
    assert seq["old_drop"] == pytest.approx(0.2) and seq["old_drop_ci"] == pytest.approx(T1 * 0.1)
    assert seq["general_drop"] == pytest.approx(0.2) and seq["general_drop_ci"] == pytest.approx(T1 * 0.1)
    assert seq["op"] == pytest.approx(0.5) and seq["train_s"] == pytest.approx(10.5)
    assert seq["trainable_parameters"] is None and seq["method_state_mib"] is None      # older runs: blank
    assert (lora["learning"], lora["old_drop"], lora["general_drop"]) == (0.5, 0.0, 0.0)
    assert lora["learning_ci"] is None and lora["trainable_parameters"] == 1000 and lora["method_state_mib"] == 2.5
    # seq learns more (0.6 > 0.5) but drops more on both panels: both optimal
    assert [(e["pareto_old"], e["pareto_general"]) for e in (seq, lora)] == [(True, True), (True, True)]


def test_general_ability_without_perplexity_is_the_mean_drop_of_the_accuracy_probes():
    a = run("seq", 0, (0.8, 0.5, 0.6))
    a["retention"] = {"perplexity_ratio": None, "probes": {
        "qa_accuracy": {"direction": "higher", "change": [0.0, -0.05, -0.1]},
        "boolq_accuracy": {"direction": "higher", "change": [0.0, 0.1, -0.3]},
        "held_out_nll": {"direction": "lower", "change": [0.0, 2.0, 3.0]}}}       # not an accuracy
    [entry] = frontier_entries(summarize([a]))
    assert entry["general_drop"] == pytest.approx(0.2) and entry["general_measure"] == "accuracy"  # (0.1 + 0.3) / 2
    assert "accuracy drop" in frontier_panels([entry], "generated")[1]["xlabel"]


def test_variants_make_a_line_in_coefficient_order_and_take_part_in_the_pareto_marking():
    def variants(shift: float) -> dict:        # given out of order; per value the two seeds differ by 2 * shift
        return {"parameter": "alpha", "points": [point(0.75, (0.5 + shift, 0.3, 0.4 + shift), 1.25),
                                                 point(0.25, (0.3 + shift, 0.3, 0.3 + shift), 1.05),
                                                 point(0.5, (0.4 + shift, 0.3, 0.4 + shift), 1.1)]}

    runs = [run("average", 0, (0.6, 0.4, 0.4), 1.2, variants(0.05)),
            run("average", 1, (0.6, 0.4, 0.4), 1.2, variants(-0.05)),
            run("seq", 0, (0.9, 0.2, 0.1), 1.3)]
    entries = frontier_entries(summarize(runs))
    assert [e["label"] for e in entries] == ["average", "average alpha=0.25", "average alpha=0.5",
                                             "average alpha=0.75", "seq"]
    e = by_label(entries)
    # alpha=0.25: learning (0.35 + 0.35)/2 and (0.25 + 0.25)/2 -> mean 0.3; bwt 0.3 - 0.35, 0.3 - 0.25 -> drop 0
    assert e["average alpha=0.25"]["learning"] == pytest.approx(0.3) and e["average alpha=0.25"]["n"] == 2
    assert e["average alpha=0.25"]["old_drop"] == pytest.approx(0.0)
    assert e["average alpha=0.25"]["general_drop"] == pytest.approx(0.05)
    assert e["average alpha=0.5"]["learning"] == pytest.approx(0.4) and e["average alpha=0.5"]["old_drop"] == pytest.approx(0.1)
    assert e["average alpha=0.75"]["learning"] == pytest.approx(0.45) and e["average alpha=0.75"]["old_drop"] == pytest.approx(0.2)
    assert e["average alpha=0.75"]["train_s"] == pytest.approx(10.5)        # its run's cost
    # (learning, old drop): average (0.5, 0.2), 0.25 (0.3, 0.0), 0.5 (0.4, 0.1), 0.75 (0.45, 0.2), seq (0.5, 0.7)
    assert [x["pareto_old"] for x in entries] == [True, True, True, False, False]
    # (learning, general drop): average (0.5, 0.2), 0.25 (0.3, 0.05), 0.5 (0.4, 0.1), 0.75 (0.45, 0.25), seq (0.5, 0.3)
    assert [x["pareto_general"] for x in entries] == [True, True, True, False, False]
    a, b = frontier_panels(entries, "generated")
    assert (a["title"], b["title"]) == ("(a) old tasks", "(b) general ability") and "perplexity" in b["xlabel"]
    line = [p for p in a["points"] if p["variant"]]
    assert [p["label"] for p in line] == ["alpha=0.25", "alpha=0.5", "alpha=0.75"]
    assert [p["x"] for p in line] == pytest.approx([0.0, 0.1, 0.2])


def test_a_run_without_general_ability_gets_only_panel_a(tmp_path):
    runs = [run("seq", 0, (0.8, 0.5, 0.6), None), run("lora", 0, (0.5, 0.5, 0.5), None)]
    entries = frontier_entries(summarize(runs))
    assert all(e["general_drop"] is None and e["pareto_general"] is None for e in entries)
    [panel] = frontier_panels(entries, "generated")
    assert panel["title"] == "(a) old tasks" and "generated" in panel["xlabel"]
    write_comparison(runs, tmp_path / "c.html")
    page = (tmp_path / "c.html").read_text()
    assert "<h2>Learn–forget frontier</h2>" in page and "<td class=\"num\">yes</td><td class=\"num\">–</td>" in page


def test_the_page_escapes_the_frontier_and_writes_its_points(tmp_path):
    evil = "<b>x</b>"
    runs = [run(evil, s, (0.8, 0.5, 0.6)) for s in range(2)] + [run("seq", 0, (0.5, 0.5, 0.5))]
    runs[0]["variants"] = {"parameter": "alpha", "points": [point(0.5, (0.4, 0.3, 0.4), 1.1)]}
    write_comparison(runs, tmp_path / "c.html", frontier_json=tmp_path / "f.json")
    page = (tmp_path / "c.html").read_text()
    assert evil not in page and "&lt;b&gt;x&lt;/b&gt; alpha=0.5" in page
    section = page[page.index("<h2>Learn–forget frontier</h2>"):page.index("<h2>Figures</h2>")]
    assert section.count("data:image/png;base64,") == 1 and section.count("<tr><td>") == 3
    points = json.loads((tmp_path / "f.json").read_text())
    assert [p["label"] for p in points] == [f"{evil}", f"{evil} alpha=0.5", "seq"]
    assert points[0]["learning"] == pytest.approx(0.7) and points[0]["pareto_old"] is True


def test_cli_report_writes_the_frontier_json_and_png(tmp_path, monkeypatch):
    db = tmp_path / "s.db"
    store = Store(db)
    for r in (run("seq", 0, (0.8, 0.5, 0.6)), run("lora", 0, (0.5, 0.5, 0.5))):
        config = {**r["config"], "data": {"name": "d", "scenario": "instruction"}, "backbone": {"name": "m"}}
        store.begin(r["run_id"], r["run_id"], config, str(tmp_path / r["run_id"]))
        store.complete(r["run_id"], r)
    monkeypatch.setattr(sys, "argv", ["forgetlab", "report", "--store", str(db), "-o", str(tmp_path / "r.html"),
                                      "--frontier-json", str(tmp_path / "f.json"), "--frontier-png", str(tmp_path / "f.png")])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    points = {p["label"]: p for p in json.loads((tmp_path / "f.json").read_text())}
    assert points["seq"]["old_drop"] == pytest.approx(0.3) and points["lora"]["learning"] == pytest.approx(0.5)
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
