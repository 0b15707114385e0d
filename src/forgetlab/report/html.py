"""The single-run HTML report: one self-contained page built from a results.json dict."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import yaml

from forgetlab.report.figures import accuracy_heatmap_png, task_curves_png

MISSING = "–"

METRICS = (
    ("acc", "final average accuracy over all tasks"),
    ("avg_incremental_acc", "accuracy on seen tasks, averaged over the stream"),
    ("learning_acc", "accuracy on each task just after learning it"),
    ("bwt", "backward transfer (negative: forgetting)"),
    ("fwt", "forward transfer to unseen tasks"),
    ("forgetting", "mean drop from each task's best accuracy"),
    ("intransigence", "gap to the joint model when learning each task"),
)

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _fmt(value: Any, decimals: int = 4) -> str:
    """A number to fixed decimals, None as an en dash, anything else as text."""
    if value is None:
        return MISSING
    if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
        return f"{value:.{decimals}f}"
    return str(value)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def write_report(results: dict, path: Path) -> Path:
    """Write the HTML report of one run (a results.json dict) to path and return the path."""
    path = Path(path)
    tasks = [str(t) for t in results["tasks"]]
    matrix = results["accuracy_matrix"]
    probe = results.get("probe_matrix")
    metrics = results.get("metrics") or {}
    figures = [{"title": "Accuracy matrix R", "uri": _data_uri(accuracy_heatmap_png(matrix, tasks, "Accuracy R"))}]
    if probe is not None:
        figures.append(
            {"title": "Linear-probe matrix P", "uri": _data_uri(accuracy_heatmap_png(probe, tasks, "Probe accuracy P"))}
        )
    page = _ENV.get_template("run.html").render(
        run_id=results.get("run_id", ""),
        status=results.get("status", ""),
        scenario=results.get("scenario", ""),
        version=results.get("forgetlab_version", ""),
        tasks=tasks,
        metrics=[(name, _fmt(metrics.get(name)), about) for name, about in METRICS],
        figures=figures,
        curves_uri=_data_uri(task_curves_png(matrix, tasks)),
        matrix=[[_fmt(v) for v in row] for row in matrix],
        timing=[(k, _fmt(v, 2)) for k, v in (results.get("timing") or {}).items()],
        environment=[(k, _fmt(v) if v is None else str(v)) for k, v in (results.get("environment") or {}).items()],
        config_yaml=yaml.safe_dump(results.get("config") or {}, sort_keys=False, allow_unicode=True),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
