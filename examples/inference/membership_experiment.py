"""Dataset inference end to end on real text (issue 7's experiment).

For each seed: Tiny Shakespeare is cut into texts of about 400 characters, shuffled, and halved into
members and non-members. A GPT-2-style model is pretrained with ``forgetlab pretrain`` on the members
only; then ``forgetlab infer`` tests (a) members against non-members, and (b) a null: two disjoint
halves of the non-members, under ``null_per_model`` test seeds. Prints one line per test and writes
``OUT/summary.json``.

    FORGETLAB_DATA_DIR=../shared/data .venv/bin/python examples/inference/membership_experiment.py \
        --seeds 0 1 2 3 4 --n 500 --out runs/membership
"""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import forgetlab
from forgetlab.config import load_pretrain_config
from forgetlab.data.corpus import chunk_text
from forgetlab.train.pretrain import pretrain


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--n", type=int, default=500, help="texts per side")
    ap.add_argument("--chars", type=int, default=400, help="characters per text (whole lines)")
    ap.add_argument("--size", default="small")
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--null-per-model", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/membership"))
    args = ap.parse_args()

    corpus = Path(os.environ.get("FORGETLAB_DATA_DIR", "../shared/data")) / "tinyshakespeare" / "train.txt"
    texts = chunk_text(corpus.read_text(encoding="utf-8"), args.chars)
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "texts": len(texts), "member": [], "null": []}
    for seed in args.seeds:
        work = args.out / f"seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        order = random.Random(seed).sample(texts, len(texts))
        members, nonmembers = order[: len(order) // 2], order[len(order) // 2:]
        write_jsonl(work / "members.jsonl", members)
        write_jsonl(work / "nonmembers.jsonl", nonmembers)
        half = len(nonmembers) // 2
        write_jsonl(work / "nonmembers_a.jsonl", nonmembers[:half])
        write_jsonl(work / "nonmembers_b.jsonl", nonmembers[half:])
        cfg = load_pretrain_config({
            "seed": seed,
            "corpus": {"path": str(work / "members.jsonl"), "valid_path": str(work / "nonmembers.jsonl")},
            "model": {"arch": "gpt2", "size": args.size, "seq_len": 128},
            "train": {"epochs": args.epochs, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50},
        })
        record = pretrain(cfg, work / "model")
        model = record["checkpoints"][-1]["path"]
        res = forgetlab.infer(model, work / "members.jsonl", work / "nonmembers.jsonl", n=args.n, seed=seed,
                              out=work / "infer-members")
        summary["member"].append({"seed": seed, "p_value": res.p_value, "effect_size": res.effect_size,
                                  "valid_perplexity": record["checkpoints"][-1]["valid_perplexity"],
                                  "feature_auc": res.feature_auc})
        print(f"seed {seed}: members vs non-members p = {res.p_value:.3g} (d = {res.effect_size:.2f})", flush=True)
        n_null = min(args.n, half)
        for k in range(args.null_per_model):
            null_seed = seed * 100 + k
            res = forgetlab.infer(model, work / "nonmembers_a.jsonl", work / "nonmembers_b.jsonl", n=n_null,
                                  seed=null_seed, out=work / f"infer-null-{k}")
            summary["null"].append({"model_seed": seed, "seed": null_seed, "n": n_null, "p_value": res.p_value,
                                    "effect_size": res.effect_size})
            print(f"seed {seed}: null test {k} p = {res.p_value:.3g} (n = {n_null})", flush=True)
    detected = sum(r["p_value"] < 0.05 for r in summary["member"])
    false = sum(r["p_value"] < 0.05 for r in summary["null"])
    summary["detected"], summary["false_positives"] = detected, false
    print(f"members detected in {detected}/{len(summary['member'])} seeds; null p < 0.05 in {false}/{len(summary['null'])}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
