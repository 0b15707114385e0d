"""PNG figures of a run's matrices (accuracy, perplexity, ...) and of comparisons, rendered off-screen
with matplotlib's Agg backend."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm, Normalize  # noqa: E402

Matrix = Sequence[Sequence[float]]


def _label(text: str) -> str:
    """Task names are plain text: escape '$' so matplotlib does not parse them as math."""
    return str(text).replace("$", r"\$")


def _png(fig) -> bytes:
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buf.getvalue()


def heatmap_png(matrix: Matrix, tasks: Sequence[str], title: str, direction: str = "higher",
                baseline: Sequence[float] | None = None, measure: str = "accuracy") -> bytes:
    """A heat map of matrix[i][j] (row: after task i, column: task j) under its baseline row (before any
    training) if given, each cell annotated. Better is brighter: colours 0..1 where every value lies
    there, else from the lowest to the highest value (on a log scale for positive lower-is-better
    values, as perplexity), turned round where lower is better."""
    lower = direction == "lower"
    values = [list(baseline), *matrix] if baseline is not None else list(matrix)
    rows = ["before training"] * (baseline is not None) + [f"after {_label(tasks[i])}" for i in range(len(matrix))]
    low, high = min(map(min, values)), max(map(max, values))
    if 0.0 <= low and high <= 1.0:
        norm = Normalize(0.0, 1.0)
    elif lower and low > 0:
        norm = LogNorm(low, max(high, low * 1.001))
    else:
        norm = Normalize(low, max(high, low + 1e-9))
    return _heatmap(values, tasks, rows, title, norm, "viridis_r" if lower else "viridis",
                    _label(measure) + (" (lower is better)" if lower else ""), _short)


def _short(value: float) -> str:
    """A cell's text: two decimals below 10, one below 100, none above."""
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def _heatmap(matrix: Matrix, tasks: Sequence[str], rows: Sequence[str], title: str, norm, cmap: str,
             label: str, fmt) -> bytes:
    """Rows ``rows`` by one column per task, each cell annotated with ``fmt(value)``."""
    n_rows, n_cols = len(matrix), len(matrix[0])
    side = max(3.0, 0.6 * max(n_rows, n_cols) + 2.0)
    font = 9 if max(n_rows, n_cols) <= 10 else 6
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(matrix, norm=norm, cmap=cmap, aspect="equal")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            shade = float(norm(value))
            bright = (1.0 - shade if cmap.endswith("_r") else shade) > 0.6
            ax.text(j, i, fmt(value), ha="center", va="center", fontsize=font, color="black" if bright else "white")
    ax.set_xticks(range(n_cols), [_label(tasks[j]) for j in range(n_cols)], rotation=45, ha="right", fontsize=font)
    ax.set_yticks(range(n_rows), rows, fontsize=font)
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("trained through task i")
    ax.set_title(_label(title))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
    return _png(fig)


def task_curves_png(matrix: Matrix, tasks: Sequence[str], measure: str = "accuracy") -> bytes:
    """Each task's value from the step it is learnt to the end of the stream, plus the running average
    over the tasks seen so far (y from 0 to 1 where every value lies there)."""
    n = len(matrix)
    steps = list(range(1, n + 1))
    fig, ax = plt.subplots(figsize=(7.0, 4.5))
    for j in range(n):
        ax.plot(steps[j:], [matrix[i][j] for i in range(j, n)], marker="o", markersize=3, label=_label(tasks[j]))
    average = [sum(matrix[i][: i + 1]) / (i + 1) for i in range(n)]
    ax.plot(steps, average, linestyle="--", color="black", linewidth=2, label="average so far")
    ax.set_xticks(steps)
    ax.set_xlim(0.8, n + 0.2)
    if all(0.0 <= v <= 1.0 for row in matrix for v in row):
        ax.set_ylim(0.0, 1.05)
    ax.set_xlabel("tasks trained")
    ax.set_ylabel(_label(measure))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if n <= 15 else 2)
    return _png(fig)


def bars_with_ci_png(labels: Sequence[str], means: Sequence[float | None], cis: Sequence[float | None],
                     title: str) -> bytes:
    """Horizontal bars of group means with their 95% confidence intervals as error bars."""
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(labels) + 1.2))
    y = list(range(len(labels)))
    ax.barh(y, [m or 0.0 for m in means], xerr=[c or 0.0 for c in cis], color="#4c78a8", capsize=3)
    ax.set_yticks(y, [_label(s) for s in labels])
    ax.invert_yaxis()
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def curves_with_ci_png(curves: dict[str, Sequence[tuple[float | None, float | None]]], xlabel: str,
                       ylabel: str) -> bytes:
    """One line per group (mean after each step) with its 95% CI as a shaded band."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, points in curves.items():
        steps = list(range(1, len(points) + 1))
        means = [m if m is not None else float("nan") for m, _ in points]
        half = [c or 0.0 for _, c in points]
        line, = ax.plot(steps, means, marker="o", markersize=3, label=_label(label))
        ax.fill_between(steps, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xticks(range(1, max(len(p) for p in curves.values()) + 1))
    ax.set_ylim(0.0, 1.05)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def lines_png(series: dict[str, Sequence[float | None]], xlabel: str, ylabel: str, title: str,
              ylim: tuple[float, float] | None = (0.0, 1.05), start: int = 1) -> bytes:
    """One line per series over steps start, start+1, ... (None: no point)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    n = max(len(v) for v in series.values())
    for label, values in series.items():
        ax.plot(range(start, start + len(values)), [float("nan") if v is None else v for v in values],
                marker="o", markersize=3, label=_label(label))
    ax.set_xticks(range(start, start + n))
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_label(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), ncol=1 if len(series) <= 15 else 2)
    return _png(fig)


def anytime_png(x: Sequence[float], values: Sequence[float], ends: Sequence[float], xlabel: str, ylabel: str,
                title: str) -> bytes:
    """An online run's anytime curve: values against x (examples seen), a dashed line at each segment's end."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    ax.plot(x, values, marker="o", markersize=3)
    for end in ends:
        ax.axvline(end, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_label(title))
    ax.grid(alpha=0.3)
    return _png(fig)


def tradeoff_png(x: Sequence[float], series: dict[str, Sequence[float | None]], xlabel: str, ylabel: str,
                 title: str) -> bytes:
    """Each series against one x over the stream (a path; its points numbered 0, 1, ... by step)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for label, values in series.items():
        pairs = [(a, b) for a, b in zip(x, values) if b is not None]
        line, = ax.plot([a for a, _ in pairs], [b for _, b in pairs], marker="o", markersize=4, label=_label(label))
        for step, (a, b) in enumerate(pairs):
            ax.annotate(str(step), (a, b), textcoords="offset points", xytext=(3, 3), fontsize=7, color=line.get_color())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_label(title))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _png(fig)


def decomposition_png(parts: Sequence[dict], tasks: Sequence[str]) -> bytes:
    """Each old task's drop in observed accuracy as stacked bars: representation loss + classifier drift."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(parts) + 2.0), 4.0))
    x = list(range(len(parts)))
    rep = [p["representation_loss"] for p in parts]
    drift = [p["classifier_drift"] for p in parts]
    ax.bar(x, rep, color="#e45756", label="representation loss (probe drop)")
    ax.bar(x, drift, bottom=[max(r, 0.0) if d >= 0 else min(r, 0.0) for r, d in zip(rep, drift)],
           color="#4c78a8", label="classifier drift (the rest)")
    ax.scatter(x, [p["observed_drop"] for p in parts], color="black", zorder=3, s=12, label="observed drop")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, [_label(tasks[p["task"]]) for p in parts], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy drop, learnt → end")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def class_forgetting_png(counts: Sequence[int], forgetting: Sequence[float]) -> bytes:
    """Each class's forgetting against its number of training examples (log scale when they span 10×)."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    ax.scatter(counts, forgetting, s=14, alpha=0.7, color="#4c78a8")
    ax.axhline(0.0, color="black", linewidth=0.8)
    if max(counts) >= 10 * max(min(counts), 1):
        ax.set_xscale("log")
    ax.set_xlabel("training examples of the class")
    ax.set_ylabel("forgetting (best earlier − final accuracy)")
    ax.grid(alpha=0.3)
    return _png(fig)


def score_histogram_png(suspect: Sequence[float], reference: Sequence[float]) -> bytes:
    """Dataset inference: the aggregated scores of the held-out halves, suspect against reference."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.histogram_bin_edges(np.concatenate([suspect, reference]), bins=30)
    ax.hist(reference, bins=bins, alpha=0.6, label="reference (non-members)", color="tab:blue")
    ax.hist(suspect, bins=bins, alpha=0.6, label="suspect", color="tab:red")
    ax.set_xlabel("aggregated membership score")
    ax.set_ylabel("texts")
    ax.legend(frameon=False)
    return _png(fig)


def p_by_size_png(sizes: Sequence[int], p_values: Sequence[float], alpha: float) -> bytes:
    """Dataset inference: the p-value as the number of texts per side grows (log scales)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(sizes, np.clip(p_values, 1e-300, 1), marker="o")
    ax.axhline(alpha, color="grey", linestyle="--", label=f"α = {alpha}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("texts per side")
    ax.set_ylabel("p-value")
    ax.legend(frameon=False)
    return _png(fig)


def frontier_png(panels: Sequence[dict], ylabel: str) -> bytes:
    """Learning (y) against a drop (x), one panel each: ``{"title", "xlabel", "points": [{"label", "group",
    "variant", "value", "x", "y", "xerr", "yerr", "pareto"}]}``. Error bars where given (clipped: the axes
    span the points); Pareto-optimal points filled, the others hollow, the optimal ones joined by a step
    line; each group's points that carry a value (its variants and its own run's, e.g. alpha) joined in
    value order and marked with it. One colour and number per group, named in the legend below."""
    groups = list(dict.fromkeys(p["group"] for panel in panels for p in panel["points"]))
    palette = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20")
    colours = {g: palette(i % palette.N) for i, g in enumerate(groups)}
    number = {g: i + 1 for i, g in enumerate(groups)}
    legend_inches = 0.25 + 0.15 * math.ceil((len(groups) + 3) / 2)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.0 + legend_inches), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        points = panel["points"]
        for group in groups:
            line = sorted((p for p in points if p["group"] == group and p.get("value") is not None), key=lambda p: p["value"])
            if len(line) > 1:
                ax.plot([p["x"] for p in line], [p["y"] for p in line], color=colours[group], linewidth=1, alpha=0.7)
        for p in points:
            colour = colours[p["group"]]
            ax.errorbar(p["x"], p["y"], xerr=p["xerr"], yerr=p["yerr"], fmt="o", markersize=4 if p["variant"] else 7,
                        color=colour, markerfacecolor=colour if p["pareto"] else "none", ecolor=(*colour[:3], 0.3),
                        elinewidth=0.8, capsize=2)
            text = f"{number[p['group']]}" + (f" {p['value']:g}" if p.get("value") is not None else "")
            ax.annotate(text, (p["x"], p["y"]), textcoords="offset points", xytext=(4, 3), fontsize=7, color=colour)
        best = sorted((p["x"], p["y"]) for p in points if p["pareto"])
        ax.step([x for x, _ in best], [y for _, y in best], where="post", color="grey", linestyle="--", linewidth=1)
        for axis, key in ((ax.set_xlim, "x"), (ax.set_ylim, "y")):
            values = [p[key] for p in points]
            pad = max(0.15 * (max(values) - min(values)), 0.01)
            axis(min(values) - pad, max(values) + pad)
        ax.set_title(_label(panel["title"]))
        ax.set_xlabel(_label(panel["xlabel"]))
        ax.set_ylabel(_label(ylabel))
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colours[g], label=_label(f"{number[g]}  {g}"))
               for g in groups]
    handles += [plt.Line2D([], [], marker="o", linestyle="", color="black", label="Pareto-optimal"),
                plt.Line2D([], [], marker="o", linestyle="", color="black", markerfacecolor="none", label="dominated"),
                plt.Line2D([], [], color="grey", linestyle="--", label="frontier")]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / (5.0 + legend_inches), 1, 1))
    return _png(fig)
