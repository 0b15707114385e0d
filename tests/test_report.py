"""The single-run HTML report: metrics, embedded figures, escaping."""

import base64
import re

from forgetlab.report import write_report
from forgetlab.report.figures import heatmap_png, task_curves_png

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
