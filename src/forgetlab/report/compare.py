"""The comparison report: runs grouped (e.g. by method), each figure as mean ± 95% CI over seeds."""
from __future__ import annotations

from pathlib import Path

from .figures import bars_with_ci_png
from .html import _ENV, _data_uri
from .summary import COLUMNS, format_cell, markdown_table, summarize


def write_comparison(runs: list[dict], path: Path, group_by: str = "name", title: str = "forgetlab runs") -> str:
    """Write the HTML comparison of completed runs (results.json dicts) to ``path``; returns its Markdown table."""
    rows = summarize(runs, group_by)
    labels = [r["group"] for r in rows]
    figures = [{"title": f"{name} (mean ± 95% CI)",
                "uri": _data_uri(bars_with_ci_png(labels, [r[name][0] for r in rows], [r[name][1] for r in rows], name))}
               for name in ("acc", "forgetting")]
    page = _ENV.get_template("compare.html").render(
        title=title, group_by=group_by, figures=figures,
        head=[t for _, t, _ in COLUMNS],
        rows=[{"group": r["group"], "n": r["n"], "seeds": ", ".join(map(str, r["seeds"])),
               "cells": [format_cell(*r[t], d) for _, t, d in COLUMNS]} for r in rows],
        runs=[{"run_id": r.get("run_id", ""), "name": r["config"].get("name") or "", "seed": r["config"].get("seed"),
               "acc": format_cell((r.get("metrics") or {}).get("acc"), None, 4)} for r in runs],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return markdown_table(rows)
