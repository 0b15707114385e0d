"""The single-run HTML report: one self-contained page built from a results.json dict."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jinja2
import yaml

from forgetlab.eval.per_class import per_class_forgetting
from forgetlab.report.figures import (anytime_png, class_forgetting_png, decomposition_png, heatmap_png, lines_png,
                                      task_curves_png, tradeoff_png)
from forgetlab.report.matrices import describe, matrices_of, measure, ordered, split_key

MISSING = "–"

SUMMARY = (
    ("across_task_acc_old", "observed accuracy on old tasks at the end (all seen classes to choose from)"),
    ("within_task_acc_old", "the same, choosing only among each task's own classes"),
    ("probe_acc_old", "a probe's accuracy on old tasks at the end: what the features still separate"),
    ("newest_task_error_share", "share of old tasks' errors predicted as a class of the newest task"),
)
RETENTION = (
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
    class_forgetting = _class_forgetting(results)
    matrices = [_matrix_section(name, m, tasks) for name, m in matrices_of(results).items() if m["values"]]
    if results.get("online") and matrices:
        _add_anytime(matrices[0], results["online"], next(iter(matrices_of(results))))
    page = _ENV.get_template("run.html").render(
        run_id=results.get("run_id", ""),
        status=results.get("status", ""),
        scenario=results.get("scenario", ""),
        version=results.get("forgetlab_version", ""),
        tasks=tasks,
        matrices=matrices,
        class_forgetting=_data_uri(class_forgetting) if class_forgetting is not None else None,
        retention=_retention(results),
        answers=_answers(results, tasks),
        diagnostics=_diagnostics(results, tasks),
        timing=[(k, _fmt(v, 2)) for k, v in (results.get("timing") or {}).items()],
        environment=[(k, _fmt(v) if v is None else str(v)) for k, v in (results.get("environment") or {}).items()],
        config_yaml=yaml.safe_dump(results.get("config") or {}, sort_keys=False, allow_unicode=True),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _matrix_section(name: str, matrix: dict, tasks: list[str]) -> dict:
    """One matrix of the run: its metrics (intransigence only where measured), heat map, each task's
    curve, and its values under its baseline row (2 decimals where a value reaches 10, else 4)."""
    values, baseline, direction = matrix["values"], matrix["baseline"], matrix["direction"]
    metrics = matrix["metrics"]
    shown = [k for k in ordered(metrics) if metrics[k] is not None or split_key(k)[0] != "intransigence"]
    rows = ([("before training", baseline)] if baseline is not None else []) + \
        [(f"after {tasks[i]}", row) for i, row in enumerate(values)]
    decimals = 2 if any(v is not None and abs(v) >= 10 for _, row in rows for v in row) else 4
    title = f"{name} matrix"
    return {
        "title": f"{title} ({direction} is better)",
        "measure": measure(name),
        "baseline": baseline is not None,
        "metrics": [(k, _fmt(metrics[k]), describe(k, name, direction)) for k in shown],
        "figures": [{"title": title + (" under its baseline row" if baseline is not None else ""),
                     "uri": _data_uri(heatmap_png(values, tasks, title, direction, baseline, name))},
                    {"title": f"Each task's {name} from the step it is learnt, and the average over the tasks "
                              "seen so far",
                     "uri": _data_uri(task_curves_png(values, tasks, name))}],
        "rows": [(label, [_fmt(v, decimals) for v in row]) for label, row in rows],
    }


def _add_anytime(section: dict, online: dict, name: str) -> None:
    """An online run: A_auc in the primary matrix's metrics table and the anytime curve among its figures."""
    curve, every = online["curve"], online["eval_every"]
    section["metrics"].append(("a_auc", _fmt(online["a_auc"]),
                               f"area under the anytime curve: the mean {name} on the tasks seen so far, "
                               f"over evaluations every {every} steps"))
    totals = [sum(counts) for counts in online["segments"]]
    ends = [sum(totals[: i + 1]) for i in range(len(totals))]
    section["figures"].append({
        "title": f"Anytime {name} on the tasks seen so far, every {every} steps (dashed: segment ends; "
                 f"{online['blurry']:.0%} of each task blurred into its neighbours)",
        "uri": _data_uri(anytime_png([p["examples_seen"] for p in curve], [p["value"] for p in curve], ends,
                                     "examples seen", f"{name} on tasks seen", "anytime evaluation"))})


def _retention(results: dict) -> dict | None:
    """General ability (results.json's ``retention``; in older files ``diagnostics.retention``): its
    summary, the matrix G of every probe (value and change from before the stream, beside its chance
    level) and figures, or None where not measured."""
    record = results.get("retention") or (results.get("diagnostics") or {}).get("retention")
    if not record:
        return None
    summary = [(k, _fmt(record[k]), about) for k, about in RETENTION if record.get(k) is not None]
    figures = _retention_figures(record)
    probes = record.get("probes") or {}
    table = None
    if probes:
        measured = len(next(iter(probes.values()))["values"])       # fewer than the tasks + 1: a run followed part way
        steps = (["before the stream"] + [f"after {t}" for t in results["tasks"]])[:measured]
        table = {"probes": [(name, p["about"], p["direction"]) for name, p in probes.items()],
                 "rows": [(label, [f"{_fmt(p['values'][i])} ({p['change'][i]:+.4f})" if i else _fmt(p["values"][0])
                                   for p in probes.values()]) for i, label in enumerate(steps)],
                 "chance": [_fmt(p.get("chance")) for p in probes.values()],
                 "informative": [MISSING if p.get("informative") is None else
                                 ("yes" if p["informative"] else "no: at chance before the stream")
                                 for p in probes.values()]}
        figure = _tradeoff_figure(results, probes)
        if figure:
            figures.append(figure)
    return {"summary": summary, "figures": figures, "g": table} if summary or figures or table else None


def _tradeoff_figure(results: dict, probes: dict) -> dict | None:
    """The primary matrix's mean over the tasks seen against each 0..1 probe, before the stream and after
    each task: does what the model learns cost what it could already do?"""
    matrices = matrices_of(results)
    if not matrices:
        return None
    name, primary = next(iter(matrices.items()))
    if primary.get("baseline") is None:
        return None
    x = [sum(primary["baseline"]) / len(primary["baseline"])] + _seen_means(primary["values"])
    series = {p_name: p["values"] for p_name, p in probes.items()
              if p["direction"] == "higher" and p.get("informative") is not False}
    if not series:
        return None
    return {"title": f"Task {name} on the tasks seen (all tasks before the stream) against general ability; "
                     "points numbered by tasks trained",
            "uri": _data_uri(tradeoff_png(x, series, f"{name}: mean over tasks seen", "general ability",
                                          "learning against general ability"))}


def _answers(results: dict, tasks: list[str]) -> dict | None:
    """The answers kept by an instruction run (each task's first few, after each task) and the share of
    closed-set answers that map to no option; None for other runs. Text is escaped by the template."""
    kept = results.get("predictions")
    if not kept:
        return None
    steps = ["before the stream"] + [f"after {t}" for t in tasks]
    unmatched = results.get("unmatched") or []
    return {"steps": [(steps[i], [(task, [(_shown_prompt(p), p["reference"], p["prediction"], _fmt(p["score"], 2))
                                          for p in kept[i].get(task, [])]) for task in tasks])
                      for i in range(len(kept))],
            "unmatched": [(steps[i], [_fmt(v, 2) for v in row]) for i, row in enumerate(unmatched)]}


def _shown_prompt(kept: dict) -> str:
    """A kept prompt, after the demonstrations a retrieval memory put before it (each cut to 200 characters)."""
    demos = kept.get("demonstrations") or []
    return "".join(f"[retrieved] {d}\n\n" for d in reversed(demos)) + kept["prompt"]


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


def _retention_figures(retention: dict) -> list[dict]:
    """General ability before the stream and after each task: one figure for the perplexity and one
    for the zero-shot accuracy, where measured."""
    figures = []
    for key, what in (("perplexity", f"perplexity on {retention.get('corpus')}"),
                      ("qa_accuracy", f"zero-shot accuracy on {retention.get('qa')}")):
        if retention.get(key) and retention[key][0] is not None:
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
    matrices = matrices_of(results)
    R, P = matrices["accuracy"]["values"], (matrices.get("probe") or {}).get("values")
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

