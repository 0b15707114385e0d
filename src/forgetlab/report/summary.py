"""Comparing runs: group them (by default by config ``name``, which a sweep sets to the grid point
without the seed) and give each figure's mean and 95% confidence interval over the group."""
from __future__ import annotations

import math
from typing import Any

from scipy import stats

# (key path in results.json, column title, digits); "a - b" is a difference of two paths.
# Train time is the run's wall time less evaluation: training plus the methods' own work between
# tasks (a Fisher estimate, pseudo-example generation, filling a memory).
COLUMNS = (
    ("metrics.acc", "acc", 4),
    ("metrics.bwt", "bwt", 4),
    ("metrics.forgetting", "forgetting", 4),
    ("metrics.avg_incremental_acc", "avg inc. acc", 4),
    ("timing.total_s - timing.eval_s", "train s", 1),
    ("resources.peak_rss_mib", "peak RSS MiB", 0),
)


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The mean and the half-width of its Student-t confidence interval (None for fewer than 2 values)."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))


def lookup(results: dict, path: str) -> Any:
    if " - " in path:
        a, b = (lookup(results, p) for p in path.split(" - "))
        return None if a is None or b is None else a - b
    node: Any = results
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def group_key(results: dict, group_by: str) -> str:
    value = lookup(results.get("config", {}), group_by)
    if value is None:
        value = lookup(results, group_by)
    return str(value if value is not None else lookup(results.get("config", {}), "method.name"))


def summarize(runs: list[dict], group_by: str = "name") -> list[dict]:
    """One row per group, in first-seen order: ``group``, ``n``, ``seeds`` and (mean, ci) per column."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(group_key(r, group_by), []).append(r)
    rows = []
    for key, members in groups.items():
        row = {"group": key, "n": len(members), "seeds": sorted(lookup(m, "config.seed") for m in members)}
        for path, title, _ in COLUMNS:
            row[title] = mean_ci([lookup(m, path) for m in members])
        rows.append(row)
    return rows


def format_cell(mean: float | None, ci: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def markdown_table(rows: list[dict], group_title: str = "method") -> str:
    head = [group_title, "n"] + [title for _, title, _ in COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["group"].replace("|", "\\|"), str(row["n"])]
        cells += [format_cell(*row[title], digits) for _, title, digits in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
