"""The learn–forget frontier of a comparison: for each group of runs, and each point of a method's
variants (e.g. weight-averaging coefficients), how much it learns of each new task against how much it
forgets, of the old tasks and of general ability, with the Pareto-optimal entries marked.

Learning is the mean of the primary matrix's diagonal (its ``learning_*`` metric; the primary matrix is
the first of ``matrices``, higher is better in every kind), the old tasks' drop is its −BWT, general
ability's drop is the general-corpus perplexity's relative increase (ratio − 1) or, for runs without it,
the mean drop of the accuracy probes over the stream."""
from __future__ import annotations

from collections.abc import Sequence

from .figures import frontier_png
from .matrices import matrices_of, split_key
from .summary import lookup, mean_ci

GENERAL = {"perplexity": "general perplexity increase (after / before − 1)",
           "accuracy": "general accuracy drop (before − after, mean over accuracy probes)"}
# (key in an entry, results.json path) of what a group's runs cost; variant points share their run's.
RESOURCES = (("trainable_parameters", "resources.trainable_parameters"),
             ("method_state_mib", "resources.method_state_mib"), ("train_s", "timing.train_s"))
FIGURES = ("learning", "old_drop", "general_drop", "op")


def pareto(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (learning, drop) points are Pareto-optimal when learning is maximised and the drop
    minimised: a point is dominated if another has learning >= and drop <= with one of them strict
    (equal points are all optimal)."""
    return [not any(l2 >= l and d2 <= d and (l2 > l or d2 < d) for l2, d2 in points) for l, d in points]


def general_measure(items: Sequence[dict]) -> str | None:
    """The measure of general ability's drop for a whole comparison (one axis, one measure): "perplexity"
    if any run or variant point has a perplexity ratio, else "accuracy" if any has an accuracy probe,
    else None."""
    records = [i.get("retention") or {} for i in items]
    if any(r.get("perplexity_ratio") is not None for r in records):
        return "perplexity"
    if any(_accuracy_changes(r) for r in records):
        return "accuracy"
    return None


def _accuracy_changes(retention: dict) -> list[float]:
    """Each accuracy probe's change over the stream (its last value less its first)."""
    return [p["change"][-1] for name, p in (retention.get("probes") or {}).items()
            if name.endswith("accuracy") and p.get("change")]


def general_drop(retention: dict | None, measure: str | None) -> float | None:
    """General ability's drop in ``measure`` (see ``general_measure``); None without it."""
    if not retention or measure is None:
        return None
    if measure == "perplexity":
        ratio = retention.get("perplexity_ratio")
        return None if ratio is None else ratio - 1.0
    changes = _accuracy_changes(retention)
    return -sum(changes) / len(changes) if changes else None


def figures_of(results: dict, measure: str | None) -> dict[str, float | None]:
    """A run's (or a variant point's) learning, old tasks' drop (−BWT), general drop and final average
    (``op``), from its primary matrix and its retention record."""
    matrices = matrices_of(results)
    metrics = next(iter(matrices.values()))["metrics"] if matrices else {}

    def stem(name: str) -> float | None:
        return next((v for k, v in metrics.items() if split_key(k)[0] == name), None)

    bwt = stem("bwt")
    return {"learning": stem("learning"), "old_drop": None if bwt is None else -bwt,
            "general_drop": general_drop(results.get("retention"), measure), "op": stem("")}


def frontier_entries(rows: Sequence[dict]) -> list[dict]:
    """One entry per group of the summary ``rows`` (their members pooled: mean and 95% CI half-width,
    ``*_ci``, of each figure), each followed by one per value of its runs' variants, in value order;
    then ``pareto_old`` and ``pareto_general`` (None where the entry lacks that panel's figures)."""
    runs = [m for row in rows for m in row["members"]]
    measure = general_measure(runs + [p for r in runs for p in _points(r)])
    entries = []
    for row in rows:
        members = row["members"]
        cost = {key: mean_ci([lookup(m, path) for m in members]) for key, path in RESOURCES}
        own = next((m["variants"].get("value") for m in members if m.get("variants")), None)   # e.g. the run's alpha
        entries.append(_entry(row["group"], row["group"], None, own, [figures_of(m, measure) for m in members],
                              cost, measure))
        by_value: dict[float, list[dict]] = {}
        for m in members:
            for point in _points(m):
                by_value.setdefault(point["value"], []).append(figures_of(point, measure))
        parameter = next((m["variants"]["parameter"] for m in members if m.get("variants")), None)
        for value in sorted(by_value):
            entries.append(_entry(f"{row['group']} {parameter}={value}", row["group"], parameter, value,
                                  by_value[value], cost, measure))
    for panel, drop in (("pareto_old", "old_drop"), ("pareto_general", "general_drop")):
        ranked = [e for e in entries if e["learning"] is not None and e[drop] is not None]
        for e, optimal in zip(ranked, pareto([(e["learning"], e[drop]) for e in ranked])):
            e[panel] = optimal
    return entries


def _points(run: dict) -> list[dict]:
    return (run.get("variants") or {}).get("points") or []


def _entry(label: str, group: str, parameter: str | None, value: float | None, figures: list[dict],
           cost: dict, measure: str | None) -> dict:
    entry = {"label": label, "group": group, "parameter": parameter, "value": value, "n": len(figures),
             "general_measure": measure}
    for key in FIGURES:
        entry[key], entry[f"{key}_ci"] = mean_ci([f[key] for f in figures])
    for key, (mean, ci) in cost.items():
        entry[key] = mean
        entry[f"{key}_ci"] = ci
    return {**entry, "pareto_old": None, "pareto_general": None}


def frontier_panels(entries: Sequence[dict], primary: str) -> list[dict]:
    """The figure's panels: (a) learning against the old tasks' drop, (b) against general ability's
    drop where any entry has one; each with the entries that have both figures."""
    panels = []
    measure = entries[0]["general_measure"] if entries else None
    for title, drop, flag, xlabel in (
            ("(a) old tasks", "old_drop", "pareto_old", f"old tasks' drop: −BWT of the {primary} matrix"),
            ("(b) general ability", "general_drop", "pareto_general", GENERAL.get(measure, ""))):
        points = [{"label": (f"{e['parameter']}={e['value']}" if e["parameter"] else e["label"]), "group": e["group"],
                   "variant": e["parameter"] is not None, "value": e["value"], "x": e[drop], "xerr": e[f"{drop}_ci"],
                   "y": e["learning"], "yerr": e["learning_ci"], "pareto": e[flag]}
                  for e in entries if e[flag] is not None]
        if points:
            panels.append({"title": title, "xlabel": xlabel, "points": points})
    return panels


def frontier_figure(entries: Sequence[dict], primary: str) -> bytes | None:
    """The frontier as a PNG (None when no entry has learning and a drop to plot)."""
    panels = frontier_panels(entries, primary)
    if not panels:
        return None
    return frontier_png(panels, f"new-task learning: mean diagonal of the {primary} matrix")
