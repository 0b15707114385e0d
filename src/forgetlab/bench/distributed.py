"""Benchmark: one run over two processes: the same config trained in one process (all the CPU
threads) and under ``torchrun --nproc_per_node 2`` with DDP (half the threads each), each in a fresh
process tree. The figure is one process's training seconds over two processes' (a speedup: above 1.0
the split pays), with the two runs' accuracy matrices, which must agree to 1e-5 (dropout off).

On a CPU machine both sides share the same cores, so the figure is what gloo's all-reduce and the
batch split cost against the parallelism gained; on GPUs each rank brings its own device.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from .common import data_dir

TARGET = 1.0


def setting(quick: bool) -> dict:
    return {"seed": 0, "backbone": {"arch": "gpt2", "size": "tiny" if quick else "small", "max_length": 32, "dropout": 0.0},
            "data": {"name": "clinc150", "classes_per_task": 10, "max_tasks": 2 if quick else 3,
                     "max_train_per_class": 8 if quick else 40, "max_test_per_class": 4 if quick else 10},
            "method": {"name": "seq"},
            "train": {"epochs": 1 if quick else 2, "batch_size": 16, "lr_backbone": 1e-3, "lr_head": 1e-2,
                      "distributed": "ddp", "progress": False}}


def run(quick: bool = False) -> dict:
    threads = max(2, os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="forgetlab-bench-ddp-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(yaml.safe_dump(setting(quick)))
        one = _run([sys.executable, "-m", "forgetlab.cli"], config, Path(tmp) / "one", threads)
        two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    "-m", "forgetlab.cli"], config, Path(tmp) / "two", threads // 2)
    gap = max(abs(a - b) for ra, rb in zip(one["accuracy_matrix"], two["accuracy_matrix"]) for a, b in zip(ra, rb))
    figure = one["timing"]["train_s"] / two["timing"]["train_s"]
    return {"name": "distributed", "figure": figure, "target": f"≥ {TARGET:.1f} (speedup), matrices equal to 1e-5",
            "met": figure >= TARGET and gap <= 1e-5,
            "setting": f"GPT-2 {'tiny' if quick else 'small'}, CLINC150 seq, 1 process × {threads} threads "
                       f"against 2 × {threads // 2} (gloo DDP)",
            "one_process_train_s": one["timing"]["train_s"], "two_processes_train_s": two["timing"]["train_s"],
            "one_process_total_s": one["timing"]["total_s"], "two_processes_total_s": two["timing"]["total_s"],
            "max_matrix_difference": gap, "cuda": torch.cuda.is_available()}


def _run(launcher: list[str], config: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "FORGETLAB_DATA_DIR": str(data_dir())}
    proc = subprocess.run([*launcher, "run", str(config), "--out", str(out), "--store", str(out.parent / "bench.db"),
                           "--set", f"train.num_threads={threads}"], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench distributed: exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads((out / "results.json").read_text())
