"""The tables of docs/open_questions.md from finished runs: one row per configuration (seeds pooled, mean ±
the 95% t interval), a method's variants (retrieval's k = 0) as rows of their own.

    python scripts/open_questions_tables.py runs/instruction-retrieval runs/instruction-expand ...
    python scripts/open_questions_tables.py runs/instruction-online --anytime-png docs/open_questions_online.png

Columns: OP (the final row's mean score), BWT, learning (the diagonal's mean), the change in WikiText-2
perplexity (after − before) and in MMLU accuracy after the last task, trainable parameters, and what the
configuration adds: a retrieval memory's entries, index MiB and milliseconds per query; block expansion's
added parameters; an online stream's A_auc."""
from __future__ import annotations

import glob
import json
import math
import sys

import numpy as np
from scipy import stats


def interval(values, digits=3) -> str:
    xs = np.array([v for v in values if v is not None], float)
    if len(xs) == 0:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.{digits}f}"
    half = stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs))
    return f"{xs.mean():.{digits}f} ± {half:.{digits}f}"


def change(run, probe):
    record = ((run.get("retention") or {}).get("probes") or {}).get(probe)
    return None if record is None else record["change"][-1]


def rows_of(runs):
    rows: dict[str, list[dict]] = {}
    for run in runs:
        name = run["config"]["name"]
        variants = run.get("variants") or {}
        own = f" {variants['parameter']}={variants['value']}" if variants else ""
        rows.setdefault(name + own, []).append(run)
        for point in variants.get("points") or []:
            rows.setdefault(f"{name} {variants['parameter']}={point['value']}", []).append(
                {**run, "metrics": point["metrics"], "retention": point["retention"], "matrices": point["matrices"],
                 "variant": True})
    return rows


def last_method(run, key):
    """A task_log figure after the last task (None for a variant evaluated without it)."""
    if run.get("variant") and key.startswith("retrieval"):
        return None
    return (run["task_log"][-1].get("method") or {}).get(key)


def main(roots: list[str], anytime_png: str | None = None) -> None:
    runs = [json.load(open(p)) for root in roots for p in glob.glob(f"{root}/*/results.json")]
    runs = [r for r in runs if r.get("status") == "completed"]
    if anytime_png:
        from forgetlab.report.figures import curves_with_ci_png
        from forgetlab.report.summary import anytime_curve

        curves = {name: anytime_curve(group) for name, group in sorted(rows_of(runs).items())}
        every = next(r["online"]["eval_every"] for r in runs if r.get("online"))
        png = curves_with_ci_png({k: v for k, v in curves.items() if v}, f"anytime evaluation (every {every} steps)",
                                 "score on the tasks met so far")
        open(anytime_png, "wb").write(png)
    print("| configuration | seeds | OP | BWT | learning | Δ perplexity | Δ MMLU | trainable | index entries | "
          "index MiB | ms / query | added params | A_auc |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, group in sorted(rows_of(runs).items()):
        metric = lambda key: [r["metrics"].get(key) for r in group]                # noqa: E731
        seeds = ",".join(str(r["config"]["seed"]) for r in group)
        trainable = group[0]["resources"].get("trainable_parameters")
        added = sum((e.get("method") or {}).get("added_parameters", 0) for e in group[0]["task_log"])
        online = [(r.get("online") or {}).get("a_auc") for r in group]
        print(f"| {name} | {seeds} | {interval(metric('score'))} | {interval(metric('bwt'))} | "
              f"{interval(metric('learning_score'))} | {interval([change(r, 'perplexity') for r in group], 2)} | "
              f"{interval([change(r, 'qa_accuracy') for r in group])} | {'–' if trainable is None else f'{trainable:,}'} | "
              f"{interval([last_method(r, 'retrieval_entries') for r in group], 0)} | "
              f"{interval([last_method(r, 'retrieval_index_mib') for r in group], 2)} | "
              f"{interval([last_method(r, 'retrieval_query_ms') for r in group], 1)} | "
              f"{f'{added:,}' if added else '–'} | {interval(online)} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    png = args[args.index("--anytime-png") + 1] if "--anytime-png" in args else None
    main([a for a in args if a not in ("--anytime-png", png)], png)
