"""The comparison report: runs grouped (e.g. by method), each figure as mean ± 95% CI over seeds and
orders, paired tests between groups, mean accuracy matrices and accuracy curves."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .figures import accuracy_heatmap_png, bars_with_ci_png, curves_with_ci_png
from .html import _ENV, _data_uri
from .study import StudySpec, study_markdown, study_png, study_points
from .summary import (COLUMNS, columns_for, format_cell, incremental_curve, markdown_table, mean_matrix, paired_tests,
                      summarize)


def write_comparison(runs: list[dict], path: Path, group_by: Sequence[str] = ("name",),
                     title: str = "forgetlab runs", study: StudySpec | None = None) -> str:
    """Write the HTML comparison of completed runs (results.json dicts) to ``path``, with the ``study``
    section first if one is given; returns its Markdown table (the study's points, then the summary)."""
    columns = columns_for(runs)
    rows = summarize(runs, group_by, columns)
    section = None
    if study is not None:
        points = study_points(runs, study)
        section = {"title": study.title, "question": study.question, "uri": _data_uri(study_png(points, study)),
                   "table": study_markdown(points, study), "spec": study,
                   "points": [{"series": p["series"] + (f" · {p['label']}" if "label" in p else ""),
                               "x": format_cell(p["x"], p.get("x_ci"), 4) if "label" in p else p["x"],
                               "n": p["n"], "y": [format_cell(m, ci, 4) for m, ci in p["y"]]} for p in points]}
    labels = [r["group"] for r in rows]
    figures = [{"title": f"{name} (mean ± 95% CI)",
                "uri": _data_uri(bars_with_ci_png(labels, [r[name][0] for r in rows], [r[name][1] for r in rows], name))}
               for name in (("acc", "forgetting") if columns is COLUMNS else ("ppl", "forgetting nll"))]
    curves = {r["group"]: incremental_curve(r["members"]) for r in rows}
    curves = {k: v for k, v in curves.items() if v}
    if curves:
        figures.append({"title": "accuracy on the tasks seen so far, after each task (mean, 95% CI band)",
                        "uri": _data_uri(curves_with_ci_png(curves, "tasks trained", "average accuracy on seen tasks"))})
    matrices = []
    for r in rows:
        mean = mean_matrix(r["members"])
        if mean is not None:
            tasks = [str(t) for t in r["members"][0]["tasks"]]
            matrices.append({"title": f"{r['group']}: mean R over {r['n']} run(s)",
                             "uri": _data_uri(accuracy_heatmap_png(mean, tasks, f"{r['group']} (mean R)"))})
    tests = paired_tests(rows)
    page = _ENV.get_template("compare.html").render(
        title=title, group_by=" · ".join(group_by), figures=figures, matrices=matrices, study=section,
        head=[t for _, t, _ in columns],
        rows=[{"group": r["group"], "n": r["n"], "seeds": ", ".join(map(str, r["seeds"])),
               "cells": [(format_cell(*r[t], d), r[t][0]) for _, t, d in columns]} for r in rows],
        tests=[{**t, "cells": [format_cell(t["diff"], t["ci"], 4), format_cell(t["t"], None, 2),
                               format_cell(t["p"], None, 4)]} for t in tests],
        runs=[{"run_id": r.get("run_id", ""), "name": r["config"].get("name") or "", "seed": r["config"].get("seed"),
               "acc": format_cell((r.get("metrics") or {}).get("acc"), None, 4)} for r in runs],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    table = markdown_table(rows, "group", columns)
    return (section["table"] + "\n" + table) if section else table
