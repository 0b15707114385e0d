"""Benchmark 2, the frozen-feature path: a frozen-backbone run over CLINC150 (15 class-incremental
tasks, SEQ* without warm-up) against one bare encoding pass of the same examples with plain
transformers (load the model, tokenize, encode in length-sorted batches of 128, mean-pool).

The run starts with an empty feature cache (cold): it must encode every example once, then train
and evaluate 15 tasks on the cached features, write its report and store its row. A second run on
the warm cache shows what later runs pay. Target: cold run / bare pass ≤ 1.3.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from ..experiment import load_config
from ..data.stream import build_stream
from ..models.backbones import resolve_model_path
from .common import MINILM

TARGET = 1.3


def setting(quick: bool) -> dict:
    data = {"name": "clinc150", "scenario": "class_incremental", "classes_per_task": 10, "order_seed": 0}
    if quick:
        data.update(max_tasks=3, max_train_per_class=10, max_test_per_class=5)
    return {"seed": 0, "backbone": {"name": MINILM, "pooling": "mean", "max_length": 64}, "data": data,
            "method": {"name": "seq_star", "warmup": False},
            "train": {"epochs": 1, "batch_size": 16, "lr_head": 1.0e-3, "progress": False}}


def bare_encoding(config: dict) -> tuple[float, int]:
    """Seconds to load the encoder and encode every train and test text of the stream once."""
    from transformers import AutoModel, AutoTokenizer

    cfg = load_config(config)
    stream = build_stream(cfg.data, cfg.seed)
    texts = [x for t in stream.tasks for x in t.train_texts + t.test_texts]
    start = time.perf_counter()
    path = resolve_model_path(cfg.backbone.name)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for i in range(0, len(order), 128):
            enc = tok([texts[j] for j in order[i: i + 128]], padding=True, truncation=True,
                      max_length=cfg.backbone.max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            (hidden * m).sum(1) / m.sum(1)
    return time.perf_counter() - start, len(texts)


def timed_run(config: dict, cache: Path, out: Path) -> tuple[float, float]:
    """Wall seconds and final accuracy of one run with ``cache`` as the feature cache."""
    from ..api import run as forgetlab_run

    os.environ["FORGETLAB_CACHE_DIR"] = str(cache)
    start = time.perf_counter()
    res = forgetlab_run(config, out=out, store=out.parent / f"{out.name}.db")
    return time.perf_counter() - start, res.metrics["acc"]


def run(quick: bool = False) -> dict:
    config = setting(quick)
    before = os.environ.get("FORGETLAB_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            bare_encoding(setting(True))                     # warm-up: imports, file cache, kernels
            encode_s, n = bare_encoding(config)
            cold_s, acc = timed_run(config, Path(tmp) / "cache", Path(tmp) / "cold")
            warm_s, acc_warm = timed_run(config, Path(tmp) / "cache", Path(tmp) / "warm")
    finally:
        if before is None:
            os.environ.pop("FORGETLAB_CACHE_DIR", None)
        else:
            os.environ["FORGETLAB_CACHE_DIR"] = before
    ratio = cold_s / encode_s
    return {"name": "frozen", "figure": ratio, "target": f"<= {TARGET}", "met": ratio <= TARGET,
            "examples": n, "bare_encoding_s": encode_s, "cold_run_s": cold_s, "warm_run_s": warm_s,
            "warm_over_encoding": warm_s / encode_s, "acc_cold": acc, "acc_warm": acc_warm,
            "setting": f"all-MiniLM-L6-v2, CLINC150 {config['data'].get('max_tasks', 15)} tasks, SEQ* without warm-up"}
