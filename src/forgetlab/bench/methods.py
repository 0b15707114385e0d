"""Benchmark 4, method overheads: each method's training-step time and peak memory over ``seq``'s,
and the size of the state a method keeps between tasks (Fisher, anchors, teacher, memory) in copies
of the model's parameters.

Every method runs the same stream in a fresh process (so its peak resident memory is its own); the
step time is the last task's training seconds over its steps, where regularisers and memories are
active. Methods run in turn over ``rounds`` rounds and each keeps its fastest round.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from .common import MINILM, in_child, rss_mib

METHODS = {
    "seq": {"name": "seq"},
    "ewc": {"name": "ewc"},
    "online_ewc": {"name": "ewc", "online": True},
    "mas": {"name": "mas"},
    "lwf": {"name": "lwf"},
    "replay": {"name": "replay", "replay": {"size": 200}},
    "der++": {"name": "der++", "replay": {"size": 200}},
}


def setting(method: dict, quick: bool) -> dict:
    backbone = {"arch": "bert", "size": "tiny", "max_length": 32} if quick else {"name": MINILM, "max_length": 32}
    return {"seed": 0, "backbone": backbone,
            "data": {"name": "clinc150", "scenario": "class_incremental", "classes_per_task": 10,
                     "max_tasks": 2 if quick else 4, "max_train_per_class": 8 if quick else 16, "max_test_per_class": 5},
            "method": method, "train": {"max_steps": 4 if quick else 20, "batch_size": 16, "progress": False}}


def measure(config: dict) -> dict:
    """In this process: build and run one stream; step time, peak memory and method state size."""
    from ..experiment import load_config
    from ..engine import Engine
    from ..store import Store

    engine = Engine(load_config(config))
    built = rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        results = engine.run(Path(tmp) / "run", Store(Path(tmp) / "store.db"))
    last = results["task_log"][-1]
    params = _bytes(engine.learner.parameters())
    return {"step_ms": 1000 * last["train_s"] / last["steps"], "peak_rss_mib": results["resources"]["peak_rss_mib"],
            "built_rss_mib": built, "state_copies": kept_bytes(engine.method) / params,
            "acc": results["metrics"]["acc"]}


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def kept_bytes(method) -> int:
    """What a method keeps between tasks: its saved state (importances, anchors, memory, logits) and
    any model of its own (LwF's teacher)."""
    own = [m for m in vars(method).values() if isinstance(m, torch.nn.Module) and m is not method.learner]
    return _bytes(method.state().values()) + sum(_bytes(m.parameters()) for m in own)


def run(quick: bool = False, rounds: int | None = None, methods: tuple[str, ...] = tuple(METHODS)) -> dict:
    best: dict[str, dict] = {}
    for r in range(rounds or (1 if quick else 2)):
        for name in methods if r % 2 == 0 else methods[::-1]:
            got = in_child(__name__, setting(METHODS[name], quick))
            if name not in best or got["step_ms"] < best[name]["step_ms"]:
                best[name] = got
    seq = best["seq"]
    rows = [{"method": name, **m, "step_over_seq": m["step_ms"] / seq["step_ms"],
             "peak_rss_over_seq": m["peak_rss_mib"] / seq["peak_rss_mib"],
             "training_rss_over_seq": (m["peak_rss_mib"] - m["built_rss_mib"]) / max(seq["peak_rss_mib"] - seq["built_rss_mib"], 1e-9)}
            for name, m in best.items()]
    worst = max(r["step_over_seq"] for r in rows)
    cfg = setting(METHODS["seq"], quick)
    return {"name": "methods", "figure": worst, "target": "report", "met": None, "rows": rows,
            "setting": f"{cfg['backbone'].get('name') or 'bert-tiny'}, CLINC150 {cfg['data']['max_tasks']} tasks, "
                       f"{cfg['train']['max_steps']} steps per task, batch 16"}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
