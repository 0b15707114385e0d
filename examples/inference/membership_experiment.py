"""Dataset inference end to end on real text (issues 7 and 22).

For each seed: the corpus (Tiny Shakespeare cut into texts of about 400 characters, or CLINC150's
short queries) is shuffled and halved into members and non-members. A GPT-2-style model is
pretrained with ``forgetlab pretrain`` on the members only; then ``forgetlab.infer`` with its
defaults (every text, cross-fitted) tests (a) members against non-members, and (b) nulls: the
non-members reshuffled into two disjoint halves, ``null_per_model`` times. The nulls reuse the
non-members' features from (a) and run the same statistics (``dataset_test``, what ``infer`` runs
after scoring), so each costs no forward pass. Prints one line per test and writes ``OUT/summary.json``.

    FORGETLAB_DATA_DIR=../shared/data .venv/bin/python examples/inference/membership_experiment.py \
        --corpus tinyshakespeare --seeds 0 1 2 3 4 --out runs/membership
    FORGETLAB_DATA_DIR=../shared/data .venv/bin/python examples/inference/membership_experiment.py \
        --corpus clinc150 --seeds 0 1 2 3 4 --null-per-model 4 --out runs/clinc150
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np

import forgetlab
from forgetlab.config import load_pretrain_config
from forgetlab.data.corpus import chunk_text, read_texts
from forgetlab.inference import dataset_test
from forgetlab.train.pretrain import pretrain


def write_jsonl(path: Path, texts: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--corpus", choices=["tinyshakespeare", "clinc150"], default="tinyshakespeare")
    ap.add_argument("--n", type=int, default=None, help="cap on texts per side (default: all)")
    ap.add_argument("--chars", type=int, default=400, help="Tiny Shakespeare: characters per text (whole lines)")
    ap.add_argument("--join-min-chars", type=int, default=0, help="infer's unit joining (0: off, the default)")
    ap.add_argument("--batch-size", type=int, default=16, help="infer's scoring batch (speed only)")
    ap.add_argument("--size", default="small")
    ap.add_argument("--epochs", type=float, default=4)
    ap.add_argument("--null-per-model", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/membership"))
    ap.add_argument("--models", type=Path, default=None,
                    help="reuse the models an earlier run of this script trained (its --out): no pretraining")
    args = ap.parse_args()

    data = Path(os.environ.get("FORGETLAB_DATA_DIR", "../shared/data"))
    if args.corpus == "tinyshakespeare":
        texts = chunk_text((data / "tinyshakespeare" / "train.txt").read_text(encoding="utf-8"), args.chars)
    else:
        texts = read_texts(data / "clinc150" / "train.jsonl")
    options = {"n": args.n, "join_min_chars": args.join_min_chars, "batch_size": args.batch_size}
    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "texts": len(texts), "member": [], "null": []}
    for seed in args.seeds:
        began = time.perf_counter()
        work = args.out / f"seed{seed}"
        work.mkdir(parents=True, exist_ok=True)
        order = random.Random(seed).sample(texts, len(texts))
        members, nonmembers = order[: len(order) // 2], order[len(order) // 2:]
        write_jsonl(work / "members.jsonl", members)
        write_jsonl(work / "nonmembers.jsonl", nonmembers)
        cfg = load_pretrain_config({
            "seed": seed,
            "corpus": {"path": str(work / "members.jsonl"), "valid_path": str(work / "nonmembers.jsonl")},
            "model": {"arch": "gpt2", "size": args.size, "seq_len": 128},
            "train": {"epochs": args.epochs, "batch_size": 16, "lr": 1e-3, "warmup_steps": 50},
        })
        if args.models:            # the same seed draws the same members, so the earlier model fits them
            record = json.loads((args.models / f"seed{seed}" / "model" / "pretrain.json").read_text())
        else:
            record = pretrain(cfg, work / "model")
        model = record["checkpoints"][-1]["path"]
        trained = time.perf_counter()
        res = forgetlab.infer(model, work / "members.jsonl", work / "nonmembers.jsonl", seed=seed,
                              out=work / "infer-members", **options)
        summary["member"].append({"seed": seed, "p_value": res.p_value, "effect_size": res.effect_size,
                                  "verdict": res.verdict, "n": res.n, "p_by_size": res.p_by_size,
                                  "fit_effect_size": res.raw["fit_effect_size"], "texts_needed": res.raw["texts_needed"],
                                  "valid_perplexity": record["checkpoints"][-1]["valid_perplexity"],
                                  "pretrain_s": trained - began, "infer_s": time.perf_counter() - trained,
                                  "feature_auc": res.feature_auc})
        print(f"seed {seed}: members vs non-members p = {res.p_value:.3g} (d = {res.effect_size:.2f}, "
              f"{res.n['suspect']} + {res.n['reference']} units): {res.verdict}; pretrain {trained - began:.0f} s, "
              f"infer {time.perf_counter() - trained:.0f} s", flush=True)
        features = res.features["reference"]
        for k in range(args.null_per_model):
            null_seed = seed * 100 + k
            order = np.random.default_rng(null_seed).permutation(len(features))
            a, b = features[order[: len(order) // 2]], features[order[len(order) // 2:]]
            null = dataset_test(a, b, seed=null_seed)
            summary["null"].append({"model_seed": seed, "seed": null_seed, "n": [len(a), len(b)],
                                    "p_value": null["p_value"], "effect_size": null["effect_size"],
                                    "verdict": null["verdict"]})
            print(f"seed {seed}: null test {k} p = {null['p_value']:.3g} ({len(a)} + {len(b)} units): "
                  f"{null['verdict']}", flush=True)
        summary["seconds_per_seed"] = summary.get("seconds_per_seed", []) + [time.perf_counter() - began]
        (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    detected = sum(r["p_value"] < 0.05 for r in summary["member"])
    false = sum(r["p_value"] < 0.05 for r in summary["null"])
    summary["detected"], summary["false_positives"] = detected, false
    print(f"members detected in {detected}/{len(summary['member'])} seeds; null p < 0.05 in {false}/{len(summary['null'])}")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
