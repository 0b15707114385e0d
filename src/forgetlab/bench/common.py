"""What every benchmark shares: interleaved timing, the machine's matrix-multiply rate, peak memory."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: bool = True) -> dict[str, list[float]]:
    """Wall seconds of each candidate over ``rounds`` rounds, run in turn (the order flips every
    round), so a slow spell on a shared machine falls on all of them alike. With ``warmup``, each
    runs once untimed first (allocator, kernels and caches warm)."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    names = list(candidates)
    if warmup:
        for fn in candidates.values():
            fn()
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def fastest(xs: list[float]) -> float:
    """The fastest round: noise on a shared machine only ever adds time, so the minimum is the
    steadiest estimate of what the code costs (as ``timeit`` advises)."""
    return float(min(xs))


def matmul_flops(n: int = 2048, repeats: int = 20, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> float:
    """The dense matrix-multiply rate (FLOP/s) of this machine: the best of ``repeats`` n×n products."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def rss_mib() -> float:
    """This process's resident set now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def in_child(module: str, args: dict, timeout: float = 3600) -> dict:
    """Run ``python -m module ARGS_JSON`` in a fresh process (so peak memory is its own) and return
    the JSON object it prints last."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(args)], capture_output=True, text=True,
                          env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {args}: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def data_dir() -> Path:
    return Path(os.environ.get("FORGETLAB_DATA_DIR", "../shared/data"))
