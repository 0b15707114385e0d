"""SEQ* without warm-up (FixBC+Cos) on CLINC150: cold-cache and warm-cache runs against one bare
encoding pass of all the stream's examples, measured on the same machine in the same invocation.

    python benchmarks/seq_star_cache.py [--config examples/clinc150_seq_star_fixbc.yaml]

Prints the three wall times and the ratios; the run times are whole `forgetlab run` processes
(start-up, model loading, report and store included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from transformers import AutoModel, AutoTokenizer

from forgetlab.config import load_config
from forgetlab.data.stream import build_stream
from forgetlab.models.backbones import resolve_model_path


def bare_encoding_seconds(cfg) -> tuple[float, int]:
    """Tokenize and mean-pool every train and test text once: plain transformers, batches of 128 by length."""
    stream = build_stream(cfg.data, cfg.seed)
    texts = [x for t in stream.tasks for x in t.train_texts + t.test_texts]
    path = resolve_model_path(cfg.backbone.name)
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for i in range(0, len(order), 128):
            enc = tok([texts[j] for j in order[i : i + 128]], padding=True, truncation=True,
                      max_length=cfg.backbone.max_length, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            (hidden * m).sum(1) / m.sum(1)
    return time.perf_counter() - start, len(texts)


def run_seconds(config: str, cache: str, out: str) -> tuple[float, float]:
    env = {**os.environ, "FORGETLAB_CACHE_DIR": cache}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "forgetlab.cli", "run", config, "--out", out],
                   env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    acc = json.load(open(os.path.join(out, "results.json")))["metrics"]["acc"]
    return wall, acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/clinc150_seq_star_fixbc.yaml")
    args = ap.parse_args()
    cfg = load_config(args.config)
    encode_s, n = bare_encoding_seconds(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "cache")
        cold_s, acc = run_seconds(args.config, cache, os.path.join(tmp, "cold"))
        warm_s, acc_warm = run_seconds(args.config, cache, os.path.join(tmp, "warm"))
    result = {"examples": n, "bare_encoding_s": round(encode_s, 2), "cold_run_s": round(cold_s, 2),
              "warm_run_s": round(warm_s, 2), "cold_over_encoding": round(cold_s / encode_s, 3),
              "acc_cold": round(acc, 4), "acc_warm": round(acc_warm, 4), "threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
