"""Benchmark 3, hardware use: training throughput of a GPT-style model from ``forgetlab pretrain`` as
model FLOP utilisation, MFU = tokens/s × 6 × parameters ÷ the dense matrix-multiply rate measured on
the same machine in the same run (target ≥ 35% on CPU for a ~10M-parameter model at sequence length 256).

Each variant times ``make_train_step`` (the step ``forgetlab pretrain`` runs: forward, loss, backward,
clipping, fused AdamW) on random token windows. 6 × parameters counts the matrix products of the
forward and backward passes (the tied LM head included); ``mfu_attention`` also counts the attention
scores, 12 × layers × dim × length per token (PaLM's definition). A bf16 variant is measured against
the bf16 multiply rate.
"""
from __future__ import annotations

import time

import torch

from ..config import load_pretrain_config
from ..models.lm_families import build_lm
from ..runtime import pick_device
from ..train.pretrain import make_optimizer, make_train_step
from .common import matmul_flops

TARGET = 0.35
VOCAB = 4096


def model_config(quick: bool) -> dict:
    if quick:
        return {"arch": "gpt2", "size": "nano", "dim": 64, "layers": 2, "heads": 2, "seq_len": 64}
    return {"arch": "gpt2", "size": "small", "dim": 384, "layers": 6, "heads": 6, "seq_len": 256}


def tokens_per_second(cfg, device: torch.device, steps: int, warmup: int) -> tuple[float, int]:
    """Throughput of ``steps`` timed training steps after ``warmup`` untimed ones; and the parameters."""
    torch.manual_seed(cfg.seed)
    model = build_lm(cfg.model, VOCAB, 0, 1).to(device).train()
    step = make_train_step(model, make_optimizer(model, cfg, device), cfg, device)
    shape = (cfg.train.batch_size, cfg.model.seq_len + 1)
    batches = [torch.randint(2, VOCAB, shape, device=device) for _ in range(4)]
    for i in range(warmup):
        step(batches[i % 4])
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        loss = step(batches[i % 4])
    loss.item()
    _sync(device)
    seconds = time.perf_counter() - start
    return steps * cfg.train.batch_size * cfg.model.seq_len / seconds, sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(quick: bool = False, device: str = "auto", variants: tuple[str, ...] = ("fp32", "bf16", "compile")) -> dict:
    dev = pick_device(device)
    cuda = dev.type == "cuda"
    model = model_config(quick)
    batch = 8 if not cuda else 64
    n = 512 if quick else (8192 if cuda else 2048)
    peaks = {"fp32": 0.0, "bf16": 0.0}

    def measure_peaks() -> None:
        """The multiply rate is the best seen: measured before and after every variant, so a busy spell
        during one measurement cannot lower the bar the throughput is divided by."""
        peaks["fp32"] = max(peaks["fp32"], matmul_flops(n, device=dev))
        peaks["bf16"] = max(peaks["bf16"], matmul_flops(n, dtype=torch.bfloat16, device=dev))

    measure_peaks()
    steps, warmup = (3, 1) if quick else (8, 2)
    rows = []
    for variant in variants:
        train = {"steps": 1, "batch_size": batch, "device": dev.type,
                 "precision": "bf16" if variant == "bf16" else "fp32", "compile": variant == "compile"}
        cfg = load_pretrain_config({"corpus": {"name": "tinyshakespeare"}, "model": model, "train": train})
        rate, params = tokens_per_second(cfg, dev, steps, warmup + (2 if variant == "compile" else 0))
        measure_peaks()
        rows.append({"variant": variant, "tokens_per_s": rate, "parameters": params, "dtype": cfg.train.precision})
    attention = 12 * model["layers"] * model["dim"] * model["seq_len"]
    for row in rows:
        peak = peaks[row["dtype"]]
        row.update(mfu=row["tokens_per_s"] * 6 * row["parameters"] / peak,
                   mfu_attention=row["tokens_per_s"] * (6 * row["parameters"] + attention) / peak, peak_tflops=peak / 1e12)
    best = max(rows, key=lambda r: r["mfu"])
    return {"name": "mfu", "figure": best["mfu"], "target": f">= {TARGET:.0%}", "met": best["mfu"] >= TARGET,
            "best_variant": best["variant"], "device": str(dev), "threads": torch.get_num_threads(),
            "setting": f"GPT-2 d={model['dim']} L={model['layers']} T={model['seq_len']}, batch {batch}, vocab {VOCAB}",
            "matmul_tflops": {k: v / 1e12 for k, v in peaks.items()}, "variants": rows}
