"""Comparing runs: filter them (``--where``), group them (by default by config ``name``, which a sweep
sets to the grid point without seed and order), and give each figure's mean and 95% confidence
interval over the group; paired tests between groups match runs on seed and task order."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import yaml
from scipy import stats

from ..config import REPLICATE_PATHS
from ..errors import UserError

# (key path in results.json, column title, digits); "a - b" is a difference of two paths.
# Train time is the run's wall time less evaluation: training plus the methods' own work between
# tasks (a Fisher estimate, pseudo-example generation, filling a memory).
COLUMNS = (
    ("metrics.acc", "acc", 4),
    ("metrics.bwt", "bwt", 4),
    ("metrics.forgetting", "forgetting", 4),
    ("metrics.avg_incremental_acc", "avg inc. acc", 4),
    ("metrics.learning_acc", "learning acc", 4),
    ("metrics.probe_acc", "probe acc", 4),
    ("timing.total_s - timing.eval_s", "train s", 1),
    ("resources.peak_rss_mib", "peak RSS MiB", 0),
)
# Language-modelling runs (lower is better but for the general-ability change's sign: see DESIGN.md).
LM_COLUMNS = (
    ("metrics.ppl", "ppl", 2),
    ("metrics.bwt_nll", "bwt nll", 4),
    ("metrics.forgetting_nll", "forgetting nll", 4),
    ("metrics.learning_ppl", "learning ppl", 2),
    ("retention.perplexity_ratio", "general ppl after/before", 3),
    ("timing.total_s - timing.eval_s", "train s", 1),
    ("resources.peak_rss_mib", "peak RSS MiB", 0),
)


def columns_for(runs: list[dict]) -> tuple:
    """The table's columns: the language-modelling ones when every run is a language-modelling run."""
    return LM_COLUMNS if runs and all(r.get("perplexity_matrix") is not None for r in runs) else COLUMNS


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> tuple[float | None, float | None]:
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
    """A dotted path in results.json (``metrics.acc``; an integer part indexes a list, negative from
    its end), or ``a - b`` for a difference of two paths."""
    if " - " in path:
        a, b = (lookup(results, p) for p in path.split(" - "))
        return None if a is None or b is None else a - b
    node: Any = results
    for part in path.split("."):
        if isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]          # a list element: ``retention.perplexity.-1``
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def value_of(results: dict, key: str) -> Any:
    """A config key (``method.name``) or else a results.json path (``status``)."""
    value = lookup(results.get("config", {}), key)
    return lookup(results, key) if value is None else value


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """``["method.name=ewc", "seed=0"]`` -> ``{"method.name": "ewc", "seed": 0}`` (values read as YAML)."""
    where = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"--where {item!r}: expected KEY=VALUE, e.g. method.name=ewc")
        try:
            where[key] = yaml.safe_load(raw)
        except yaml.YAMLError:
            where[key] = raw
    return where


def matches(results: dict, where: dict[str, Any]) -> bool:
    """True if every ``where`` key has the given value (as numbers where both read as numbers, else as text)."""
    return all(_same(value_of(results, key), wanted) for key, wanted in where.items())


def _same(value: Any, wanted: Any) -> bool:
    try:
        return float(value) == float(wanted)
    except (TypeError, ValueError):
        return value == wanted or str(value) == str(wanted)


def check_where(runs: list[dict], where: dict[str, Any]) -> None:
    """A ``--where`` key no run has is a typo, not an empty selection."""
    for key in where:
        if runs and all(value_of(r, key) is None for r in runs):
            raise UserError(f"--where {key}: no run has this key")


def group_key(results: dict, group_by: Sequence[str]) -> str:
    values = [value_of(results, key) for key in group_by]
    if group_by == ["name"] and values[0] is None:
        return str(value_of(results, "method.name"))          # runs not from a sweep: by method
    return " · ".join(str(v) for v in values)


def replicate(results: dict) -> tuple:
    """What a run repeats: its seed and task order (pairs across groups match on this)."""
    return tuple(str(value_of(results, key)) for key in REPLICATE_PATHS)


def summarize(runs: list[dict], group_by: Sequence[str] = ("name",), columns: tuple | None = None) -> list[dict]:
    """One row per group, in first-seen order: ``group``, ``n``, ``seeds``, ``members`` and (mean, ci) per
    column (``columns``, default ``columns_for(runs)``)."""
    columns = columns or columns_for(runs)
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(group_key(r, list(group_by)), []).append(r)
    rows = []
    for key, members in groups.items():
        row = {"group": key, "n": len(members), "seeds": sorted(value_of(m, "seed") for m in members),
               "members": members}
        for path, title, _ in columns:
            row[title] = mean_ci([lookup(m, path) for m in members])
        rows.append(row)
    return rows


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float | None]:
    """Paired Student t-test of a - b: mean difference, its 95% CI half-width, t and the two-sided p."""
    diffs = [x - y for x, y in zip(a, b)]
    mean, ci = mean_ci(diffs)
    out = {"n": len(diffs), "diff": mean, "ci": ci, "t": None, "p": None}
    if len(diffs) >= 2:
        sd = float(np.std(diffs, ddof=1))
        if sd > 0:
            out["t"] = mean / (sd / math.sqrt(len(diffs)))
            out["p"] = float(2 * stats.t.sf(abs(out["t"]), len(diffs) - 1))
    return out


def paired_tests(rows: list[dict], path: str = "metrics.acc") -> list[dict]:
    """Every pair of groups compared on ``path`` over the replicates (seed, order) both groups ran
    (a group that ran a replicate several times, e.g. with other keys varied, counts its mean)."""
    tests = []
    for i, first in enumerate(rows):
        for second in rows[i + 1:]:
            a, b = _by_replicate(first["members"], path), _by_replicate(second["members"], path)
            shared = [k for k in a if k in b]
            if shared:
                tests.append({"a": first["group"], "b": second["group"], "metric": path.split(".")[-1],
                              **paired_test([a[k] for k in shared], [b[k] for k in shared])})
    return tests


def _by_replicate(members: list[dict], path: str) -> dict[tuple, float]:
    """The group's value for each (seed, order): the mean where the group ran it more than once."""
    values: dict[tuple, list[float]] = {}
    for m in members:
        if lookup(m, path) is not None:
            values.setdefault(replicate(m), []).append(lookup(m, path))
    return {k: sum(v) / len(v) for k, v in values.items()}


def mean_matrix(members: list[dict], key: str = "accuracy_matrix") -> list[list[float]] | None:
    """The element-wise mean of the group's matrices (None if they differ in shape)."""
    matrices = [np.asarray(m[key], dtype=float) for m in members if m.get(key)]
    if not matrices or len({x.shape for x in matrices}) != 1:
        return None
    return np.mean(matrices, axis=0).tolist()


def incremental_curve(members: list[dict]) -> list[tuple[float | None, float | None]] | None:
    """After each task i: the mean (and CI) over the group of the accuracy on the tasks seen so far."""
    matrices = [np.asarray(m["accuracy_matrix"], dtype=float) for m in members]
    if len({x.shape for x in matrices}) != 1:
        return None
    per_run = [[float(R[i, : i + 1].mean()) for i in range(R.shape[0])] for R in matrices]
    return [mean_ci(list(step)) for step in zip(*per_run)]


def format_cell(mean: float | None, ci: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def records(rows: list[dict], columns: tuple = COLUMNS) -> list[dict]:
    """The summary as plain records (for CSV/JSON export): mean and CI half-width per column."""
    out = []
    for row in rows:
        record = {"group": row["group"], "n": row["n"], "seeds": row["seeds"]}
        for _, title, _ in columns:
            record[title], record[f"{title} ci95"] = row[title]
        out.append(record)
    return out


def markdown_table(rows: list[dict], group_title: str = "method", columns: tuple = COLUMNS) -> str:
    head = [group_title, "n"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["group"].replace("|", "\\|"), str(row["n"])]
        cells += [format_cell(*row[title], digits) for _, title, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
