"""Peak memory against stream length: peak resident memory of a CLINC150 ``seq_star`` run and of a
``replay`` run storing 1,000 examples, each at 5, 10 and 15 tasks, every run in a fresh process.
Growth should be linear at most: the increase from 10 to 15 tasks no larger than from 5 to 10 (plus noise)."""
from __future__ import annotations

from .common import MINILM, in_child

NOISE_MIB = 5.0          # allowance per task for allocator noise when comparing growth rates
RUNS = {
    "seq_star": {"name": "seq_star"},
    "replay": {"name": "replay", "replay": {"size": 1000}},
}


def setting(method: dict, tasks: int, quick: bool) -> dict:
    backbone = {"arch": "bert", "size": "tiny", "max_length": 32} if quick else {"name": MINILM, "max_length": 32}
    return {"seed": 0, "backbone": backbone,
            "data": {"name": "clinc150", "scenario": "class_incremental", "classes_per_task": 10, "max_tasks": tasks,
                     "max_train_per_class": 4 if quick else 20, "max_test_per_class": 3 if quick else 10},
            "method": method,
            "train": {"max_steps": 2 if quick else 15, "batch_size": 16, "progress": False, "feature_cache": False}}


def run(quick: bool = False, tasks: tuple[int, ...] = (5, 10, 15)) -> dict:
    rows = []
    for name, method in RUNS.items():
        peaks = [in_child("forgetlab.bench.methods", setting(method, t, quick))["peak_rss_mib"] for t in tasks]
        steps = [b - a for a, b in zip(peaks, peaks[1:])]
        per_task = [s / (t1 - t0) for s, t0, t1 in zip(steps, tasks, tasks[1:])]
        rows.append({"method": name, "tasks": list(tasks), "peak_rss_mib": peaks, "mib_per_task": per_task,
                     "at_most_linear": all(b <= a + NOISE_MIB for a, b in zip(per_task, per_task[1:]))})
    return {"name": "memory", "figure": max(r["peak_rss_mib"][-1] for r in rows), "target": "linear at most",
            "met": all(r["at_most_linear"] for r in rows), "rows": rows,
            "setting": f"{'bert-tiny' if quick else 'all-MiniLM-L6-v2'}, CLINC150 class-incremental, 10 classes per task"}
