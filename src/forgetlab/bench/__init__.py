"""``forgetlab bench``: the performance benchmarks, each figure a ratio against a baseline measured in
the same process and run, so a busy shared machine slows both alike.

- ``loop``: engine ``seq`` steps over a plain PyTorch loop (target ≤ 1.10)
- ``frozen``: a frozen-backbone CLINC150 run over one bare encoding pass (≤ 1.3)
- ``mfu``: GPT pretraining throughput as model FLOP utilisation (≥ 35% on CPU)
- ``methods``: each method's step time and memory over ``seq``'s
- ``memory``: peak memory at 5, 10 and 15 tasks (linear at most)
- ``optimisations``: each optimisation on against off
- ``incumbents``: forgetlab against sequential fine-tuning with the Hugging Face Trainer (≥ 1.5× faster)
- ``decode``: batched greedy decoding over one prompt at a time (speedup reported; outputs identical)
- ``sft``: instruction tuning against TRL's ``SFTTrainer`` (completion-only loss) on the same ids, batches and
  weights: seconds per step, TRL / forgetlab (≥ 1.0), and the first step's losses equal to 1e-4
- ``distributed``: one run in one process over the same run in two DDP processes (torchrun, gloo on CPU):
  the training speedup, and the matrices equal to 1e-5
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Callable

import torch

from ..runtime import environment

BENCHMARKS = ("loop", "frozen", "mfu", "methods", "memory", "optimisations", "incumbents", "decode", "sft", "distributed")


def benchmark(name: str) -> Callable[..., dict]:
    return importlib.import_module(f"{__name__}.{name}").run


def run_benchmarks(names: list[str], quick: bool = False, progress: Callable[[dict], None] | None = None) -> dict:
    """Run the named benchmarks in order; returns ``{"results": [...], "environment": ...}``."""
    results = []
    for name in names:
        start = time.perf_counter()
        result = benchmark(name)(quick=quick)
        result["seconds"] = time.perf_counter() - start
        results.append(result)
        if progress:
            progress(result)
    return {"quick": quick, "threads": torch.get_num_threads(), "results": results,
            "environment": environment(None, torch.device("cpu"))}


def summary_rows(report: dict) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, figure, target, met, setting) for each result, as text."""
    rows = []
    for r in report["results"]:
        figure = f"{r['figure']:.1%}" if r["name"] == "mfu" else f"{r['figure']:.3f}"
        if r["name"] == "memory":
            figure = f"{r['figure']:.0f} MiB"
        met = "–" if r["met"] is None else ("yes" if r["met"] else "no")
        rows.append((r["name"], figure, r["target"], met, r["setting"]))
    return rows
