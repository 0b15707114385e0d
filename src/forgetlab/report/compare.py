"""The comparison report: runs grouped (e.g. by method), each figure as mean ± 95% CI over seeds and
orders, the learn–forget frontier, paired tests between groups, mean matrices and accuracy curves."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from scipy.stats import spearmanr

from ..eval.per_class import per_class_forgetting
from .figures import bars_with_ci_png, class_forgetting_png, curves_with_ci_png, heatmap_png
from .frontier import GENERAL, frontier_entries, frontier_figure
from .html import _ENV, _data_uri
from .matrices import matrices_of, split_key
from .study import StudySpec, study_markdown, study_png, study_points
from .summary import (anytime_curve, columns_for, format_cell, incremental_curve, lookup, markdown_table, mean_matrix,
                      paired_tests, shared_matrices, summarize, with_intransigence)


def write_comparison(runs: list[dict], path: Path, group_by: Sequence[str] = ("name",),
                     title: str = "forgetlab runs", study: StudySpec | None = None,
                     study_figure: Path | None = None, references: list[dict] | None = None,
                     frontier_json: Path | None = None, frontier_png: Path | None = None) -> str:
    """Write the HTML comparison of completed runs (results.json dicts) to ``path``, with the ``study``
    section first if one is given (its figure also to ``study_figure``, if given); returns its Markdown
    table (the study's points, then the summary). Each run's intransigence is measured against its
    joint run among ``references`` (default: the runs themselves). The learn–forget frontier's entries
    also go to ``frontier_json`` as a JSON list, and its figure to ``frontier_png``, if given."""
    runs = with_intransigence(runs, runs if references is None else references)
    columns = columns_for(runs)
    rows = summarize(runs, group_by, columns)
    section = None
    if study is not None:
        points = study_points(runs, study)
        png = study_png(points, study)
        if study_figure is not None:
            Path(study_figure).write_bytes(png)
        section = {"title": study.title, "question": study.question, "uri": _data_uri(png),
                   "table": study_markdown(points, study), "spec": study,
                   "points": [{"series": (f"{i}. {p['series']} · {p['label']}" if "label" in p else p["series"]),
                               "x": format_cell(p["x"], p.get("x_ci"), 4) if "label" in p else p["x"],
                               "n": p["n"], "y": [format_cell(m, ci, 4) for m, ci in p["y"]]}
                              for i, p in enumerate(points, 1)]}
    labels = [r["group"] for r in rows]
    figures = [{"title": f"{name} (mean ± 95% CI)",
                "uri": _data_uri(bars_with_ci_png(labels, [r[name][0] for r in rows], [r[name][1] for r in rows], name))}
               for where, name, _ in columns
               if where.startswith("metrics.") and split_key(where.removeprefix("metrics."))[0] in ("", "forgetting")]
    curves = {r["group"]: incremental_curve(r["members"]) for r in rows}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        figures.append({"title": "accuracy on the tasks seen so far, after each task (mean, 95% CI band)",
                        "uri": _data_uri(curves_with_ci_png(curves, "tasks trained", "average accuracy on seen tasks"))})
    anytime = {r["group"]: anytime_curve(r["members"]) for r in rows}
    anytime = {k: v for k, v in anytime.items() if v}
    if anytime:
        figures.append({"title": "online streams: the score on the tasks met so far at every anytime evaluation "
                                 "(mean, 95% CI band; its mean is A_auc)",
                        "uri": _data_uri(curves_with_ci_png(anytime, "anytime evaluation", "score on tasks met so far"))})
    for r in rows:
        pooled = _class_frequency_points(r["members"])
        if pooled:
            counts, forgetting = zip(*pooled)
            rho = spearmanr(counts, forgetting).statistic
            figures.append({"title": f"{r['group']}: each class's forgetting against its training examples, "
                                     f"{len(pooled)} classes of {sum(map(_uneven, r['members']))} runs "
                                     f"(Spearman ρ = {rho:.2f})",
                            "uri": _data_uri(class_forgetting_png(counts, forgetting))})
    matrices, names = [], shared_matrices(runs)
    for r in rows if names else ():
        mean = mean_matrix(r["members"], names[0])
        if mean is not None:
            tasks = [str(t) for t in r["members"][0]["tasks"]]
            direction = matrices_of(r["members"][0])[names[0]]["direction"]
            matrices.append({"title": f"{r['group']}: mean {names[0]} matrix over {r['n']} run(s)",
                             "uri": _data_uri(heatmap_png(mean, tasks, f"{r['group']} (mean {names[0]})", direction))})
    frontier = _frontier_section(rows, next(iter(matrices_of(runs[0])), ""))
    if frontier_json is not None:
        Path(frontier_json).write_text(json.dumps(frontier["entries"] if frontier else [], indent=1) + "\n")
    if frontier_png is not None and frontier:
        Path(frontier_png).write_bytes(frontier["png"])
    tests = paired_tests(rows, _tested_path(study))
    first = next((c for c in columns if c[0].startswith("metrics.")), None)
    page = _ENV.get_template("compare.html").render(
        title=title, group_by=" · ".join(group_by), figures=figures, matrices=matrices, study=section, frontier=frontier,
        matrix_name=names[0] if names else "", run_metric=first[1] if first else "",
        head=[t for _, t, _ in columns],
        rows=[{"group": r["group"], "n": r["n"], "seeds": ", ".join(map(str, r["seeds"])),
               "cells": [(format_cell(*r[t], d), r[t][0]) for _, t, d in columns]} for r in rows],
        tests=[{**t, "cells": [format_cell(t["diff"], t["ci"], 4), format_cell(t["t"], None, 2),
                               format_cell(t["p"], None, 4)]} for t in tests],
        runs=[{"run_id": r.get("run_id", ""), "name": r["config"].get("name") or "", "seed": r["config"].get("seed"),
               "metric": format_cell(lookup(r, first[0]), None, first[2]) if first else ""} for r in runs],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    table = markdown_table(rows, "group", columns)
    return (section["table"] + "\n" + table) if section else table


def _frontier_section(rows: list[dict], primary: str) -> dict | None:
    """The frontier's figure, its table's rows and its entries (None when no entry has learning and a
    drop to plot)."""
    entries = frontier_entries(rows)
    png = frontier_figure(entries, primary)
    if png is None:
        return None
    yes_no = {True: "yes", False: "no", None: "–"}
    table = [[e["label"], str(e["n"]), format_cell(e["learning"], e["learning_ci"], 4),
              format_cell(e["old_drop"], e["old_drop_ci"], 4), format_cell(e["general_drop"], e["general_drop_ci"], 4),
              format_cell(e["op"], e["op_ci"], 4),
              "" if e["trainable_parameters"] is None else f"{e['trainable_parameters']:,.0f}",
              "" if e["method_state_mib"] is None else f"{e['method_state_mib']:.1f}",
              "" if e["train_s"] is None else format_cell(e["train_s"], e["train_s_ci"], 1),
              yes_no[e["pareto_old"]], yes_no[e["pareto_general"]]] for e in entries]
    return {"uri": _data_uri(png), "png": png, "entries": entries, "table": table, "primary": primary,
            "general": GENERAL.get(entries[0]["general_measure"], "general ability's drop")}


def _tested_path(study: StudySpec | None) -> str | None:
    """The results path the paired tests compare: the study's first y (a plain path), else None (the
    summary's first metric)."""
    return study.y[0] if study is not None and " - " not in study.y[0] else None


def _uneven(run: dict) -> bool:
    """Whether a run's classes differ in training examples (and it has per-class accuracies)."""
    counts = run.get("class_train_counts")
    return bool(counts) and bool(run.get("per_class_accuracy")) and len(set(counts)) > 1


def _class_frequency_points(runs: list[dict]) -> list[tuple[int, float]]:
    """(training examples, forgetting) of every class with an earlier evaluation, in runs whose classes
    differ in training frequency (a long tail, sparsity by rounding)."""
    points = []
    for run in runs:
        if _uneven(run):
            forgetting = per_class_forgetting(run["per_class_accuracy"])
            points += [(n, f) for n, f in zip(run["class_train_counts"], forgetting) if f is not None]
    return points
