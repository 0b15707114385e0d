"""The single-run HTML report: one self-contained page built from a results.json dict."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import yaml

from forgetlab.eval.per_class import per_class_forgetting
from forgetlab.report.figures import (accuracy_heatmap_png, class_forgetting_png, decomposition_png, lines_png,
                                     perplexity_heatmap_png, task_curves_png)

MISSING = "–"

METRICS = (
    ("acc", "final average accuracy over all tasks"),
    ("avg_incremental_acc", "accuracy on seen tasks, averaged over the stream"),
    ("learning_acc", "accuracy on each task just after learning it"),
    ("bwt", "backward transfer (negative: forgetting)"),
    ("fwt", "forward transfer to unseen tasks"),
    ("forgetting", "mean drop from each task's best accuracy"),
    ("intransigence", "gap to the joint model when learning each task"),
    ("probe_acc", "final average accuracy of a probe on the frozen features"),
)
LM_METRICS = tuple(
    (f"{prefix}{unit}", f"{about} (lower is better)")
    for unit, what in (("ppl", "perplexity"), ("nll", "log-perplexity (mean NLL, nats)"))
    for prefix, about in (
        ("", f"final average {what} over all tasks"),
        ("avg_incremental_", f"{what} on seen tasks, averaged over the stream"),
        ("learning_", f"{what} on each task just after learning it"),
        ("bwt_", f"backward transfer in {what}: final − just learnt (positive: forgetting)"),
        ("fwt_", f"forward transfer in {what}: just before learning a task − before any training"),
        ("forgetting_", f"mean rise of {what} from each task's best earlier value"),
    )
)
SUMMARY = (
    ("across_task_acc_old", "observed accuracy on old tasks at the end (all seen classes to choose from)"),
    ("within_task_acc_old", "the same, choosing only among each task's own classes"),
    ("probe_acc_old", "a probe's accuracy on old tasks at the end: what the features still separate"),
    ("newest_task_error_share", "share of old tasks' errors predicted as a class of the newest task"),
    ("perplexity_ratio", "general-corpus perplexity after the stream / before it (causal LMs)"),
    ("qa_accuracy_change", "zero-shot multiple-choice accuracy after the stream − before it"),
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
    class_forgetting = _class_forgetting(results)
    if class_forgetting is not None:
        figures.append({"title": "Each class's forgetting against its number of training examples",
                        "uri": _data_uri(class_forgetting)})
    diagnostics = _diagnostics(results, tasks)
    lm = _language_modeling(results, tasks)
    shown = METRICS + (LM_METRICS if lm else ())
    page = _ENV.get_template("run.html").render(
        diagnostics=diagnostics,
        lm=lm,
        run_id=results.get("run_id", ""),
        status=results.get("status", ""),
        scenario=results.get("scenario", ""),
        version=results.get("forgetlab_version", ""),
        tasks=tasks,
        metrics=[(name, _fmt(metrics.get(name)), about) for name, about in shown],
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


def _class_forgetting(results: dict) -> bytes | None:
    """The per-class forgetting scatter, for runs whose classes differ in training frequency (or that
    ask for a long tail) and that have a class with an earlier evaluation; else None."""
    A, counts = results.get("per_class_accuracy"), results.get("class_train_counts")
    if not A or not counts:
        return None
    transform = ((results.get("config") or {}).get("data") or {}).get("transform") or {}
    if transform.get("zipf") is None and len(set(counts)) < 2:
        return None
    points = [(n, f) for n, f in zip(counts, per_class_forgetting(A)) if f is not None]
    return class_forgetting_png(*zip(*points)) if points else None


def _language_modeling(results: dict, tasks: list[str]) -> dict | None:
    """The perplexity section of a language-modelling run (None for other runs): the heat map and
    table of P under its baseline row, and each task's perplexity across the stream."""
    P, b = results.get("perplexity_matrix"), results.get("baseline_perplexity")
    if P is None:
        return None
    curves = {tasks[j]: [b[j]] + [row[j] for row in P] for j in range(len(tasks))}
    figures = [{"title": "Perplexity matrix P (lower is better)",
                "uri": _data_uri(perplexity_heatmap_png(P, b, tasks, "Perplexity P"))},
               {"title": "Each task's perplexity before the stream (0) and after each task",
                "uri": _data_uri(lines_png(curves, "tasks trained", "perplexity", "perplexity (lower is better)",
                                           ylim=None, start=0))}]
    figures += _retention_figures(results.get("retention"))
    rows = [("before training", b)] + [(f"after {tasks[i]}", row) for i, row in enumerate(P)]
    return {"figures": figures, "rows": [(label, [_fmt(v, 2) for v in row]) for label, row in rows]}


def _retention_figures(retention: dict | None) -> list[dict]:
    """General ability (results.json's ``retention``) before the stream and after each task: one
    figure for the perplexity and one for the zero-shot accuracy, where measured."""
    figures = []
    for key, what in (("perplexity", f"perplexity on {(retention or {}).get('corpus')}"),
                      ("qa_accuracy", f"zero-shot accuracy on {(retention or {}).get('qa')}")):
        if retention and retention[key][0] is not None:
            figures.append({"title": f"General ability: {what}, before the stream (0) and after each task",
                            "uri": _data_uri(lines_png({key: retention[key]}, "tasks trained", key, "retention",
                                                       ylim=None if key == "perplexity" else (0.0, 1.05), start=0))})
    return figures


def _seen_means(matrix: list[list[float | None]]) -> list[float]:
    return [sum(row[: i + 1]) / (i + 1) for i, row in enumerate(matrix)]


def _diagnostics(results: dict, tasks: list[str]) -> dict | None:
    """Figures and tables of the run's diagnostics section (None for runs without one)."""
    d = results.get("diagnostics")
    if not d:
        return None
    R, P = results["accuracy_matrix"], results.get("probe_matrix")
    series = {"observed (R)": _seen_means(R), "within-task": _seen_means(d["within_task_matrix"])}
    if P is not None:
        series["probe (P)"] = _seen_means(P)
    figures = [{"title": "Average accuracy on the tasks seen so far: observed, within-task and probe",
                "uri": _data_uri(lines_png(series, "tasks trained", "accuracy on seen tasks", "learn or recall?"))}]
    if d.get("probe_matrix_by_layer"):
        layers = {f"layer {k}": _seen_means(P_k) for k, P_k in d["probe_matrix_by_layer"].items()}
        figures.append({"title": "Probe accuracy on the tasks seen so far, by hidden layer",
                        "uri": _data_uri(lines_png(layers, "tasks trained", "probe accuracy on seen tasks",
                                                   "probes by layer"))})
    if d.get("decomposition"):
        figures.append({"title": "Each old task's drop: representation loss + classifier drift",
                        "uri": _data_uri(decomposition_png(d["decomposition"], tasks))})
    if d.get("cka_to_initial"):
        figures.append({"title": "Linear CKA of a fixed probe set's features to the initial backbone's",
                        "uri": _data_uri(lines_png({"CKA": d["cka_to_initial"]}, "tasks trained", "linear CKA",
                                                   "representation drift"))})
    figures += _retention_figures(d.get("retention"))
    norms = d["head_row_norms"]
    figures.append({"title": "Mean norm of each task's classifier rows after each task",
                    "uri": _data_uri(lines_png({tasks[j]: [row[j] for row in norms] for j in range(len(tasks))},
                                               "tasks trained", "row norm", "classifier rows", ylim=None))})
    return {
        "summary": [(k, _fmt(d["summary"].get(k)), about) for k, about in SUMMARY if k in d["summary"]],
        "figures": figures,
        "decomposition": [(tasks[p["task"]], _fmt(p["observed_drop"]), _fmt(p["representation_loss"]),
                           _fmt(p["classifier_drift"])) for p in d.get("decomposition") or []],
    }

