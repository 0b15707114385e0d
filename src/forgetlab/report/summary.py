"""Comparing runs: filter them (``--where``), group them (by default by config ``name``, which a sweep
sets to the grid point without seed and order), and give each figure's mean and 95% confidence
interval over the group; paired tests between groups match runs on seed and task order."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import yaml
from scipy import stats

from ..config import REPLICATE_PATHS
from ..errors import UserError
from ..eval.metrics import intransigence
from ..eval.retention import PROBES
from .matrices import LOG_SCALE, STEMS, SUMMARY_STEMS, column_title, matrices_of, ordered, split_key

# The columns after the metrics: (key path in results.json, column title, digits); "a - b" is a difference
# of two paths. Train time is the run's wall time less evaluation: training plus the methods' own work
# between tasks (a Fisher estimate, pseudo-example generation, filling a memory).
RETENTION_COLUMN = ("retention.perplexity_ratio", "general ppl after/before", 3)
# General ability's change over the stream (the last row of G less its first), one column per probe.
PROBE_COLUMNS = tuple((f"retention.probes.{name}.change.-1", f"Δ {name.replace('_', ' ')}", 2 if direction == "lower" else 4)
                      for name, (direction, _) in PROBES.items())
RESOURCE_COLUMNS = (
    ("timing.total_s - timing.eval_s", "train s", 1),
    ("resources.peak_rss_mib", "peak RSS MiB", 0),
)


def metric_keys(runs: list[dict]) -> list[str]:
    """The metric keys a table comparing runs shows: for each matrix every run has (accuracy first),
    its keys with a stem of SUMMARY_STEMS that hold a value in at least one run. A matrix with a
    log-scale twin that the runs have (perplexity and nll) takes its differences (bwt, forgetting) from
    the twin, which gets no columns of its own."""
    tables = [matrices_of(r) for r in runs]
    names = shared_matrices(runs)
    twins = {name: log for name, log in LOG_SCALE.items() if name in names and log in names}
    keys = []
    for name in names:
        if name in twins.values():
            continue
        own = _keys(tables, name)
        if name in twins:
            own = [k for k in own if not _difference(k)] + [k for k in _keys(tables, twins[name]) if _difference(k)]
        keys += [k for k in ordered(own, SUMMARY_STEMS) if any(_metric(r, k) is not None for r in runs)]
    return keys


def shared_matrices(runs: list[dict]) -> list[str]:
    """The names of the matrices every run has, accuracy first, the others in the order they come."""
    tables = [matrices_of(r) for r in runs]
    names = [n for n in dict.fromkeys(n for t in tables for n in t) if all(n in t for t in tables)]
    return sorted(names, key=lambda n: n != "accuracy")


def _keys(tables: list[dict], name: str) -> list[str]:
    return list(dict.fromkeys(k for t in tables for k in t[name]["metrics"]))


def _difference(key: str) -> bool:
    return STEMS[split_key(key)[0]].difference


def _metric(run: dict, key: str) -> Any:
    return (run.get("metrics") or {}).get(key)


def columns_for(runs: list[dict]) -> tuple:
    """The table's columns: the metrics of ``metric_keys`` (2 decimals where a value reaches 10, else 4),
    the general-ability perplexity ratio and each other probe's change over the stream where a run has
    one, train time and peak memory."""
    columns = []
    for key in metric_keys(runs):
        large = any(abs(_metric(r, key) or 0.0) >= 10 for r in runs)
        columns.append((f"metrics.{key}", column_title(key), 2 if large else 4))
    if any(_metric(r, "a_auc") is not None for r in runs):
        columns.append(("metrics.a_auc", "A_auc", 4))
    if any(lookup(r, RETENTION_COLUMN[0]) is not None for r in runs):
        columns.append(RETENTION_COLUMN)
    columns += [c for c in PROBE_COLUMNS if c[0] != "retention.probes.perplexity.change.-1"
                and any(lookup(r, c[0]) is not None for r in runs)]
    return tuple(columns) + RESOURCE_COLUMNS


def with_intransigence(runs: list[dict], pool: list[dict]) -> list[dict]:
    """The runs, each that has a joint run in ``pool`` (completed, method.name joint, the same config but
    for method, name and log: the same stream and replicate) with ``metrics.intransigence`` =
    intransigence(R, diag(R_joint)): the joint model's own R[j, j] is R*[j]. Other runs as they are."""
    joints: dict[str, dict] = {}
    for run in pool:
        if run.get("status", "completed") == "completed" and _method(run) == "joint":
            joints.setdefault(_stream_key(run), run)             # several: the first one
    out = []
    for run in runs:
        joint = joints.get(_stream_key(run))
        R, R_joint = _accuracy(run), _accuracy(joint) if joint else None
        if R is None or R_joint is None or R.shape != R_joint.shape or R.shape[0] != R.shape[1]:
            out.append(run)
            continue
        value = intransigence(R, np.diag(R_joint))
        run = {**run, "metrics": {**(run.get("metrics") or {}), "intransigence": value}}
        if (run.get("matrices") or {}).get("accuracy"):
            accuracy = run["matrices"]["accuracy"]
            run["matrices"] = {**run["matrices"], "accuracy": {
                **accuracy, "metrics": {**(accuracy.get("metrics") or {}), "intransigence": value}}}
        out.append(run)
    return out


def _method(run: dict) -> Any:
    return ((run.get("config") or {}).get("method") or {}).get("name")


def _stream_key(run: dict) -> str:
    """The run's config without method, name and log: what a joint reference must share with it."""
    config = {k: v for k, v in (run.get("config") or {}).items() if k not in ("method", "name", "log")}
    return json.dumps(config, sort_keys=True, default=str)


def _accuracy(run: dict) -> np.ndarray | None:
    values = (matrices_of(run).get("accuracy") or {}).get("values")
    return None if not values else np.asarray(values, dtype=float)


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


def paired_tests(rows: list[dict], path: str | None = None) -> list[dict]:
    """Every pair of groups compared on ``path`` (default: the first metric of ``metric_keys``) over the
    replicates (seed, order) both groups ran (a group that ran a replicate several times, e.g. with
    other keys varied, counts its mean)."""
    if path is None:
        keys = metric_keys(_members(rows))
        if not keys:
            return []
        path = f"metrics.{keys[0]}"
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


def mean_matrix(members: list[dict], name: str = "accuracy") -> list[list[float]] | None:
    """The element-wise mean of the group's matrix ``name`` (None if they differ in shape)."""
    matrices = [np.asarray(m["values"], dtype=float) for m in (matrices_of(r).get(name) for r in members)
                if m and m["values"]]
    if not matrices or len({x.shape for x in matrices}) != 1:
        return None
    return np.mean(matrices, axis=0).tolist()


def incremental_curve(members: list[dict]) -> list[tuple[float | None, float | None]] | None:
    """After each task i: the mean (and CI) over the group of the accuracy on the tasks seen so far."""
    matrices = [_accuracy(m) for m in members]
    if any(R is None for R in matrices) or len({x.shape for x in matrices}) != 1:
        return None
    per_run = [[float(R[i, : i + 1].mean()) for i in range(R.shape[0])] for R in matrices]
    return [mean_ci(list(step)) for step in zip(*per_run)]


def anytime_curve(members: list[dict]) -> list[tuple[float | None, float | None]] | None:
    """Online runs (results.json ``online``): at each anytime evaluation, the mean (and CI) over the group
    of the primary matrix's mean over the tasks met so far; None unless every member has a curve as long."""
    curves = [[p["value"] for p in (m.get("online") or {}).get("curve") or []] for m in members]
    if not curves[0] or len({len(c) for c in curves}) != 1:
        return None
    return [mean_ci(list(point)) for point in zip(*curves)]


def format_cell(mean: float | None, ci: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def records(rows: list[dict], columns: tuple | None = None) -> list[dict]:
    """The summary as plain records (for CSV/JSON export): mean and CI half-width per column
    (``columns``, default ``columns_for`` the rows' runs)."""
    columns = columns or columns_for(_members(rows))
    out = []
    for row in rows:
        record = {"group": row["group"], "n": row["n"], "seeds": row["seeds"]}
        for _, title, _ in columns:
            record[title], record[f"{title} ci95"] = row[title]
        out.append(record)
    return out


def markdown_table(rows: list[dict], group_title: str = "method", columns: tuple | None = None) -> str:
    columns = columns or columns_for(_members(rows))
    head = [group_title, "n"] + [title for _, title, _ in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["group"].replace("|", "\\|"), str(row["n"])]
        cells += [format_cell(*row[title], digits) for _, title, digits in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _members(rows: list[dict]) -> list[dict]:
    return [m for row in rows for m in row["members"]]
