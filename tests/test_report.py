"""The single-run HTML report: each matrix's metrics, figures and table, general ability, escaping;
the matrices of a run, read or derived from older files."""

import base64
import re

from forgetlab.report import write_report
from forgetlab.report.figures import heatmap_png, task_curves_png
from forgetlab.report.matrices import column_title, describe, matrices_of, split_key

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<script>alert(1)</script>"


def _results(probe=None):
    matrix = [[0.9, 0.1, 0.05], [0.6, 0.85, 0.2], [0.4, 0.55, 0.8]]
    return {
        "forgetlab_version": "0.1.0",
        "run_id": "run-42",
        "status": "completed",
        "config": {"seed": 0, "data": {"name": EVIL, "scenario": "class_incremental"}, "method": {"name": "seq"}},
        "scenario": "class_incremental",
        "tasks": ["task0", EVIL, "task$2"],
        "accuracy_matrix": matrix,
        "probe_matrix": probe,
        "metrics": {"acc": 0.583333333, "avg_incremental_acc": 0.712345, "bwt": -0.375, "fwt": 0.0125,
                    "forgetting": 0.4, "intransigence": None, "learning_acc": 0.85},
        "timing": {"train_s": 12.5, "eval_s": 1.25, "total_s": 13.75},
        "environment": {"python": "3.11.7", "torch": "2.3.0", "transformers": "4.45.0", "seed": 0},
    }


def _images(page):
    return re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_report_contents(tmp_path):
    path = write_report(_results(), tmp_path / "deep" / "report.html")
    page = path.read_text(encoding="utf-8")
    assert "run-42" in page and "completed" in page
    for value in ("0.5833", "0.7123", "-0.3750", "0.0125", "0.4000", "0.8500"):
        assert f'<td class="num">{value}</td>' in page
    assert "intransigence" not in page          # not measured (no joint reference): no row
    assert "0.5500" in page  # the matrix as a table
    assert "13.75" in page and "transformers" in page

    images = _images(page)
    assert len(images) == 2
    for data in images:
        assert base64.b64decode(data).startswith(PNG_SIGNATURE)


def test_report_escapes_text(tmp_path):
    page = write_report(_results(), tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<pre>" in page and "scenario: class_incremental" in page


def test_probe_matrix_adds_a_heat_map(tmp_path):
    probe = [[0.95, 0.3, 0.3], [0.9, 0.9, 0.35], [0.88, 0.86, 0.9]]
    page = write_report(_results(probe), tmp_path / "report.html").read_text(encoding="utf-8")
    images = _images(page)
    assert len(images) == 4                     # each matrix: its heat map and its tasks' curves
    assert all(base64.b64decode(d).startswith(PNG_SIGNATURE) for d in images)
    assert "probe" in page.lower()


def test_figures_single_task():
    assert heatmap_png([[0.5]], ["only"], "R").startswith(PNG_SIGNATURE)
    assert heatmap_png([[12.0]], ["only"], "P", "lower", baseline=[30.0]).startswith(PNG_SIGNATURE)
    assert task_curves_png([[0.5]], ["only"]).startswith(PNG_SIGNATURE)


# -- a run's matrices ----------------------------------------------------------------------------
def _with_rouge():
    """A run with a third kind of matrix: every reader loops over ``matrices``, none names "rouge"."""
    R, G = [[0.9, 0.1], [0.6, 0.8]], [[0.5, 0.2], [0.3, 0.45]]
    accuracy = {"acc": 0.7, "bwt": -0.3, "intransigence": None}          # (0.6 + 0.8) / 2, 0.6 - 0.9
    rouge = {"rouge": 0.375, "bwt_rouge": -0.2}                          # (0.3 + 0.45) / 2, 0.3 - 0.5
    return {"run_id": "run-r", "status": "completed", "scenario": "summaries", "tasks": ["t0", "t1"],
            "config": {"seed": 0, "method": {"name": "seq"}}, "accuracy_matrix": R,
            "matrices": {"accuracy": {"values": R, "baseline": None, "direction": "higher", "metrics": accuracy},
                         "rouge": {"values": G, "baseline": [0.1, 0.15], "direction": "higher", "metrics": rouge}},
            "metrics": {**accuracy, **rouge}, "timing": {"total_s": 3.0, "eval_s": 1.0}}


def _older_lm():
    """A language-modelling results.json from before ``matrices``."""
    return {"tasks": ["a", "b"], "accuracy_matrix": [[0.3, 0.1], [0.2, 0.4]], "baseline_accuracy": [0.05, 0.05],
            "probe_matrix": None, "perplexity_matrix": [[20.0, 90.0], [40.0, 25.0]], "baseline_perplexity": [99.0, 98.0],
            "nll_matrix": [[3.0, 4.5], [3.7, 3.2]], "baseline_nll": [4.6, 4.58],
            "metrics": {"acc": 0.3, "bwt": -0.1, "forgetting": 0.1, "learning_acc": 0.35, "ppl": 32.5,
                        "bwt_ppl": 20.0, "forgetting_ppl": 20.0, "learning_ppl": 22.5, "nll": 3.45, "bwt_nll": 0.7,
                        "forgetting_nll": 0.7, "learning_nll": 3.1},
            "metric_directions": {"acc": "higher", "ppl": "lower", "nll": "lower"}}


def test_matrices_are_read_or_derived_from_older_files():
    run = _with_rouge()
    assert list(matrices_of(run)) == ["accuracy", "rouge"]
    assert matrices_of(run)["rouge"]["baseline"] == [0.1, 0.15]
    older = matrices_of(_older_lm())
    assert list(older) == ["accuracy", "perplexity", "nll"]
    assert [m["direction"] for m in older.values()] == ["higher", "lower", "lower"]
    assert older["perplexity"]["baseline"] == [99.0, 98.0] and older["accuracy"]["baseline"] == [0.05, 0.05]
    assert set(older["accuracy"]["metrics"]) == {"acc", "bwt", "forgetting", "learning_acc"}
    assert set(older["perplexity"]["metrics"]) == {"ppl", "bwt_ppl", "forgetting_ppl", "learning_ppl"}
    assert set(older["nll"]["metrics"]) == {"nll", "bwt_nll", "forgetting_nll", "learning_nll"}
    probe = matrices_of({**_results([[0.9, 0.1, 0.1]] * 3), "metrics": {"acc": 0.5, "probe_acc": 0.6}})
    assert probe["probe"] == {"values": [[0.9, 0.1, 0.1]] * 3, "baseline": None, "direction": "higher",
                              "metrics": {"probe_acc": 0.6}}
    assert list(matrices_of({"metrics": {"acc": 0.5, "ppl": 9.0}})) == ["accuracy", "perplexity"]   # a store's row


def test_metric_keys_split_titles_and_words():
    assert [split_key(k) for k in ("acc", "bwt", "learning_acc", "probe_acc", "bwt_nll", "rouge", "avg_incremental_ppl")] \
        == [("", "acc"), ("bwt", "acc"), ("learning", "acc"), ("", "probe_acc"), ("bwt", "nll"), ("", "rouge"),
            ("avg_incremental", "ppl")]
    assert [column_title(k) for k in ("avg_incremental_acc", "bwt", "bwt_nll", "probe_acc")] == \
        ["avg inc. acc", "bwt", "bwt nll", "probe acc"]
    assert describe("bwt_rouge", "rouge", "higher") == "backward transfer: final − just learnt rouge (negative: forgetting)"
    assert describe("forgetting_ppl", "perplexity", "lower") == \
        "mean rise of each task's perplexity from its best earlier value (lower is better)"


def test_every_matrix_gets_its_section(tmp_path):
    page = write_report(_with_rouge(), tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>accuracy matrix (higher is better)</h2>" in page and "<h2>rouge matrix (higher is better)</h2>" in page
    assert ('<td>bwt_rouge</td><td class="num">-0.2000</td>'
            "<td>backward transfer: final − just learnt rouge (negative: forgetting)</td>") in page
    assert '<tr><th>before training</th><td class="num">0.1000</td><td class="num">0.1500</td></tr>' in page
    assert "intransigence" not in page
    assert len(_images(page)) == 4                        # two matrices: a heat map and the tasks' curves each


def test_a_measured_intransigence_is_listed(tmp_path):
    results = _results()
    results["metrics"]["intransigence"] = 0.125
    page = write_report(results, tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<td>intransigence</td><td class="num">0.1250</td>' in page


def test_language_modelling_sections_from_an_older_file(tmp_path):
    results = {**_results(), **_older_lm(), "run_id": "lm"}
    page = write_report(results, tmp_path / "report.html").read_text(encoding="utf-8")
    for title in ("accuracy matrix (higher is better)", "perplexity matrix (lower is better)",
                  "nll matrix (lower is better)"):
        assert f"<h2>{title}</h2>" in page
    assert '<tr><th>before training</th><td class="num">99.00</td><td class="num">98.00</td></tr>' in page
    assert ('<td>bwt_nll</td><td class="num">0.7000</td><td>backward transfer: final − just learnt '
            'log-perplexity (mean NLL, nats) (positive: forgetting) (lower is better)</td>') in page
    assert len(_images(page)) == 6


def _retention(corpus):
    return {"corpus": corpus, "qa": None, "perplexity": [20.0, 25.0, 30.0, 32.0], "qa_accuracy": [None] * 4,
            "perplexity_ratio": 1.6, "qa_accuracy_change": None}


def test_retention_is_read_from_its_one_record_or_an_older_files_diagnostics(tmp_path):
    page = write_report({**_results(), "retention": _retention("<b>wiki</b>")}, tmp_path / "a.html").read_text()
    assert "<h2>General ability</h2>" in page and '<td>perplexity_ratio</td><td class="num">1.6000</td>' in page
    assert "perplexity on &lt;b&gt;wiki&lt;/b&gt;" in page and "qa_accuracy_change" not in page
    assert len(_images(page)) == 3
    R = _results()["accuracy_matrix"]
    older = {**_results(), "diagnostics": {"summary": {"perplexity_ratio": 1.6}, "within_task_matrix": R,
                                           "head_row_norms": R, "retention": _retention("wikitext2")}}
    page = write_report(older, tmp_path / "b.html").read_text()
    assert page.count('<td>perplexity_ratio</td><td class="num">1.6000</td>') == 1
    assert "General ability: perplexity on wikitext2" in page
    assert "<h2>General ability</h2>" not in write_report(_results(), tmp_path / "c.html").read_text()
