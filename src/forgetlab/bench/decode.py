"""Benchmark: batched greedy decoding (``eval.generation.greedy_decode``) against one prompt at a time.

256 prompts of 20 to 60 tokens of varied text, 32 new tokens each, no early stop (no end id, no stop
string), decoded once one at a time (batch size 1) and once in length-sorted batches of 32 and of 64,
after a short untimed warm-up. The figure is the speedup, one-at-a-time seconds over batched seconds
at the better batch size; the outputs of every batch size must be identical to one-at-a-time's (met).

The model is GPT-2 ``small`` built from a config (random weights: it runs anywhere, and the work per
token does not depend on the weights); ``python -m forgetlab.bench.decode --model NAME`` times a
pretrained causal LM instead and prints the result as JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch

from ..config import BackboneConfig
from ..eval.generation import greedy_decode
from ..models.backbones import build_backbone
from ..runtime import pick_device

WORDS = ("the model forgets what it learned on an earlier task when it is trained on a later one , and "
         "replay of stored examples , a penalty on moving important weights , or a frozen copy of the "
         "network can slow that down . we measure accuracy after every task ; 17 tasks , 3 seeds , "
         "learning rate 0.001 . why does the loss rise again ? because gradients of task two overwrite "
         "features that task one needs").split()


def make_prompts(backbone, n: int, lengths: tuple[int, int], seed: int = 0) -> list[list[int]]:
    """``n`` prompts of random words, each cut to a length drawn from ``lengths`` (tokens, inclusive)."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(lengths[1]))      # at least one token a word
        prompts.append(backbone.tokenize([text], max_length=rng.randint(*lengths))[0])
    return prompts


def run(quick: bool = False, model: str | None = None, device: str = "auto") -> dict:
    dev = pick_device(device)
    n, new, lengths, batch_sizes = (16, 4, (5, 15), (4, 8)) if quick else (256, 32, (20, 60), (32, 64))
    torch.manual_seed(0)
    if model is None:
        cfg = BackboneConfig(arch="gpt2", size="tiny" if quick else "small", max_length=lengths[1] + new)
    else:
        cfg = BackboneConfig(name=model, max_length=lengths[1])
    backbone = build_backbone(cfg).to(dev)
    prompts = make_prompts(backbone, n, lengths)

    def decode(batch_size: int) -> tuple[list[list[int]], float]:
        start = time.perf_counter()
        out = greedy_decode(backbone, prompts, new, device=dev, batch_size=batch_size, eos_ids=())
        return out, time.perf_counter() - start

    greedy_decode(backbone, prompts[:8], 2, device=dev, batch_size=4, eos_ids=())      # warm-up
    one, one_s = decode(1)
    rows = []
    for batch_size in batch_sizes:
        out, seconds = decode(batch_size)
        rows.append({"batch_size": batch_size, "seconds": seconds, "speedup": one_s / seconds,
                     "identical_prompts": sum(a == b for a, b in zip(out, one))})
    identical = all(r["identical_prompts"] == n for r in rows)
    best = max(rows, key=lambda r: r["speedup"])
    return {"name": "decode", "figure": best["speedup"], "target": "report; outputs identical", "met": identical,
            "one_at_a_time_s": one_s, "rows": rows, "prompts": n, "new_tokens": new, "device": dev.type,
            "setting": f"{backbone.source}, {n} prompts of {lengths[0]}-{lengths[1]} tokens, {new} new tokens, "
                       f"batch {best['batch_size']} vs 1, {dev.type}"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m forgetlab.bench.decode", description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a causal LM (hub name or folder); default: GPT-2 small from a config")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick, model=args.model, device=args.device)))
