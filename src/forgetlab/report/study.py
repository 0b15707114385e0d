"""A study: the figure a sweep answers its question with, from the sweep's completed runs.

A sweep file's ``study`` section names what to plot (every key a config key or a results.json path,
as ``--where`` and ``--group-by`` read them; ``a - b`` is a difference, an integer part a list index):

```yaml
study:
  title: Forgetting against model size
  question: Do pretrained models forget less than randomly initialised ones, and less with scale?
  kind: line                       # line (numeric x), bars (categorical x) or learn_forget
  x: backbone.parameters           # line/bars: the x axis; learn_forget: how much was learnt
  y: [metrics.forgetting_nll]      # one panel each; learn_forget: one path, how much was forgotten
  series: backbone.init            # one line (or colour) per value
  log_x: true
```
Runs with the same series and x value are one point: the mean and 95% CI over their seeds and
orders. ``learn_forget`` draws one point per grid point (the run's ``name``), x and y with CIs,
numbered as in the study's table.
"""
from __future__ import annotations

from typing import Literal

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .figures import _label, _png
from .summary import format_cell, mean_ci, value_of


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    question: str = ""
    kind: Literal["line", "bars", "learn_forget"] = "line"
    x: str
    y: list[str] = Field(min_length=1)
    series: str | None = None
    log_x: bool = False
    x_label: str | None = None
    y_labels: list[str] | None = None

    @model_validator(mode="after")
    def _shape(self):
        if self.kind == "learn_forget" and len(self.y) != 1:
            raise ValueError("study.y: learn_forget plots one forgetting path against study.x")
        if self.y_labels is not None and len(self.y_labels) != len(self.y):
            raise ValueError("study.y_labels: one label for each path of study.y")
        return self

    def labels(self) -> list[str]:
        return self.y_labels or list(self.y)


def study_points(runs: list[dict], spec: StudySpec) -> list[dict]:
    """One point per (series, x), or per grid point for learn_forget, sorted by series then x:
    ``series``, ``x``, ``n``, ``seeds`` and ``y`` (a (mean, ci) per y path; for learn_forget also ``x_ci``)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        series = str(value_of(run, spec.series)) if spec.series else ""
        key = (series, str(value_of(run, "name"))) if spec.kind == "learn_forget" else (series, value_of(run, spec.x))
        groups.setdefault(key, []).append(run)
    points = []
    for (series, x), members in groups.items():
        point = {"series": series, "x": x, "n": len(members), "seeds": sorted(str(value_of(m, "seed")) for m in members),
                 "y": [mean_ci([value_of(m, path) for m in members]) for path in spec.y]}
        if spec.kind == "learn_forget":
            point["label"], (point["x"], point["x_ci"]) = x, mean_ci([value_of(m, spec.x) for m in members])
        points.append(point)
    return sorted(points, key=lambda p: (p["series"], _sortable(p["x"])))


def _sortable(x) -> tuple:
    return (0, float(x), "") if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, 0.0, str(x))


def study_png(points: list[dict], spec: StudySpec) -> bytes:
    """The study's figure: a panel per y path (line or bars), or one learn–forget scatter."""
    if spec.kind == "learn_forget":
        return _learn_forget_png(points, spec)
    panels = len(spec.y)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0), squeeze=False)
    series = list(dict.fromkeys(p["series"] for p in points))
    categories = list(dict.fromkeys(str(p["x"]) for p in sorted(points, key=lambda p: _sortable(p["x"]))))
    for k, (ax, label) in enumerate(zip(axes[0], spec.labels())):
        for s_index, name in enumerate(series):
            mine = [p for p in points if p["series"] == name and p["y"][k][0] is not None]
            means = [p["y"][k][0] for p in mine]
            errors = [p["y"][k][1] or 0.0 for p in mine]
            legend = _label(f"{spec.series} = {name}") if spec.series else None
            if spec.kind == "bars":
                width = 0.8 / max(1, len(series))
                xs = [categories.index(str(p["x"])) + (s_index - (len(series) - 1) / 2) * width for p in mine]
                ax.bar(xs, means, width, yerr=errors, capsize=3, label=legend)
            else:
                ax.errorbar([float(p["x"]) for p in mine], means, yerr=errors, marker="o", capsize=3, label=legend)
        if spec.kind == "bars":
            ax.set_xticks(range(len(categories)), [_label(_short(c)) for c in categories], rotation=30, ha="right",
                          fontsize=8)
        elif spec.log_x:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
        if any(p["y"][k][0] is not None and p["y"][k][0] <= 0 for p in points):
            ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xlabel(_label(spec.x_label or spec.x))
        ax.set_ylabel(_label(label))
        ax.grid(alpha=0.3)
        if spec.series:
            ax.legend(fontsize=7)
    fig.suptitle(_label(spec.title), fontsize=11)
    return _png(fig)


def _short(category: str) -> str:
    """A checkpoint path as its model folder and step (``gpt2-small/step-000600``); other text as it is."""
    head, sep, step = category.partition("/checkpoints/")
    return f"{head.rstrip('/').rsplit('/', 1)[-1]}/{step}" if sep else category


def _learn_forget_png(points: list[dict], spec: StudySpec) -> bytes:
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    colours = {name: f"C{i}" for i, name in enumerate(dict.fromkeys(p["series"] for p in points))}
    for number, p in enumerate(points, 1):        # numbered as in the study's table
        (y, y_ci), = p["y"]
        if p["x"] is None or y is None:
            continue
        ax.errorbar(p["x"], y, xerr=p["x_ci"] or 0.0, yerr=y_ci or 0.0, marker="o", capsize=3,
                    color=colours[p["series"]])
        ax.annotate(str(number), (p["x"], y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    for name, colour in colours.items():
        ax.plot([], [], "o", color=colour, label=_label(f"{spec.series} = {name}" if spec.series else name))
    ax.set_xlabel(_label(spec.x_label or spec.x) + "  (more learnt →)")
    ax.set_ylabel(_label(spec.labels()[0]) + "  (more forgotten ↑)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(_label(spec.title), fontsize=11)
    return _png(fig)


def study_markdown(points: list[dict], spec: StudySpec) -> str:
    """The study's points as a Markdown table (mean ± 95% CI half-width over each point's runs)."""
    x_title = spec.x_label or spec.x
    head = ["series", x_title, "n"] + spec.labels()
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for number, p in enumerate(points, 1):
        x = format_cell(p["x"], p["x_ci"], 4) if spec.kind == "learn_forget" else str(p["x"])
        series = f"{number}. {p['series']} · {p['label']}" if spec.kind == "learn_forget" else p["series"]
        cells = [series or "–", x, str(p["n"])] + [format_cell(m, ci, 4) for m, ci in p["y"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
