"""The one check to run on a lent GPU (nothing downloaded: the model is built from a config, the tokens
are synthetic): a ~270M-parameter Llama-style causal LM is pretrained for about a minute, then trained on
prompt -> response examples (loss on the response only) in bf16 autocast over fp32 weights, as
forgetlab's ``Stepper`` does, with and without gradient checkpointing. For each it prints tokens/s, MFU
(6 × parameters × tokens/s over the H200's dense bf16 peak, and over a bf16 matrix product measured
here) and the peak of ``torch.cuda.max_memory_allocated`` beside forgetlab.scaling's prediction of the
model states plus the activations measured at the end of the forward. Writes $OUT/device_check.json.

    python scripts/device_check.py            # on the GPU machine: about 3 minutes
    python scripts/device_check.py --smoke    # a tiny model, a few steps, on the CPU: checks the script
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from forgetlab.scaling import GiB, checkpointed_activations, training_memory  # noqa: E402

H200_BF16_PEAK = 989e12          # dense bf16 FLOP/s, NVIDIA's H200 SXM datasheet (1,979 with sparsity)
FULL = {"model": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, max_position_embeddings=1024),
        "batch": 8, "length": 1024, "pretrain_seconds": 60.0, "steps": 20, "warmup": 3, "matmul": 8192}
SMOKE = {"model": dict(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=4, vocab_size=512, max_position_embeddings=64),
         "batch": 4, "length": 64, "pretrain_seconds": 0.0, "steps": 2, "warmup": 1, "matmul": 256}


def build(model_cfg: dict, device: torch.device, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**model_cfg, attn_implementation="sdpa", use_cache=False)
    return LlamaForCausalLM(config).to(device)


def progressions(batch: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Synthetic text a model can learn: each row counts from a random start in a random stride (mod vocab)."""
    start = torch.randint(0, vocab, (batch, 1), generator=generator)
    stride = torch.randint(1, 17, (batch, 1), generator=generator)
    return (start + stride * torch.arange(length)) % vocab


def instruction_batch(batch: int, length: int, vocab: int, generator: torch.Generator) -> dict:
    """Prompt -> response rows: the first half of a progression is the prompt (labels -100), the model is
    scored on continuing it, as forgetlab's instruction kind scores the response tokens only."""
    ids = progressions(batch, length, vocab, generator)
    labels = ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": ids, "labels": labels}


def step_fn(model, optimizer, device: torch.device):
    """One Stepper-like step: forward under bf16 autocast, backward, clip at 1.0, AdamW, grads set to None."""
    def step(batch: dict) -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_rate(n: int, device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of an n × n bf16 matrix product on this device (the best of three timings)."""
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    best = 0.0
    for _ in range(3):
        a @ b
        sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        sync(device)
        best = max(best, 2 * n ** 3 * repeats / (time.perf_counter() - start))
    return best


def pretrain(spec: dict, device: torch.device) -> tuple[dict, dict]:
    """Train from scratch on progressions for ``pretrain_seconds`` (at least 3 steps); the weights and a record."""
    model = build(spec["model"], device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    step = step_fn(model, optimizer, device)
    generator = torch.Generator().manual_seed(1)
    vocab, losses, start, steps = spec["model"]["vocab_size"], [], time.perf_counter(), 0
    while steps < 3 or time.perf_counter() - start < spec["pretrain_seconds"]:
        ids = progressions(spec["batch"], spec["length"], vocab, generator).to(device)
        loss = step({"input_ids": ids, "labels": ids})
        steps += 1
        if steps <= 1 or steps % 50 == 0:
            losses.append(round(loss.item(), 4))
    losses.append(round(loss.item(), 4))
    seconds = time.perf_counter() - start
    record = {"steps": steps, "seconds": round(seconds, 1), "losses": losses,
              "tokens_per_s": round(steps * spec["batch"] * spec["length"] / seconds)}
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, record


def finetune(spec: dict, weights: dict, device: torch.device, checkpointing: bool, rate: float) -> dict:
    """Time ``steps`` instruction steps from the pretrained weights; measure memory on CUDA."""
    model = build(spec["model"], device)
    model.load_state_dict(weights)
    if checkpointing:       # as forgetlab's set_gradient_checkpointing: transformers 5's name, else the older one
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = step_fn(model, optimizer, device)
    generator = torch.Generator().manual_seed(2)
    vocab = spec["model"]["vocab_size"]
    batches = [{k: v.to(device) for k, v in instruction_batch(spec["batch"], spec["length"], vocab, generator).items()}
               for _ in range(4)]
    for i in range(spec["warmup"]):         # the first step creates AdamW's moments
        step(batches[i % 4])
    cuda = device.type == "cuda"
    activations = None
    if cuda:
        sync(device)
        before = torch.cuda.memory_allocated()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(**batches[0]).loss
        activations = (torch.cuda.memory_allocated() - before) / GiB     # what the forward keeps for the backward
        loss.backward()
        optimizer.zero_grad(set_to_none=True)
        del loss
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start = time.perf_counter()
    for i in range(spec["steps"]):
        loss = step(batches[i % 4])
    final = loss.item()
    sync(device)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters())
    tokens_per_s = spec["steps"] * spec["batch"] * spec["length"] / seconds
    flops = 6 * params * tokens_per_s
    states = training_memory(params, precision="bf16")["total"]
    row = {"checkpointing": checkpointing, "parameters": params, "loss": round(final, 4),
           "tokens_per_s": round(tokens_per_s), "mfu_h200_peak": round(flops / H200_BF16_PEAK, 4),
           "mfu_measured_matmul": round(flops / rate, 4), "predicted_states_gib": round(states, 3),
           "checkpointed_formula_gib": round(checkpointed_activations(
               spec["batch"] * spec["length"], hidden=spec["model"]["hidden_size"],
               layers=spec["model"]["num_hidden_layers"]), 3)}
    if cuda:
        peak = torch.cuda.max_memory_allocated() / GiB
        row.update(max_allocated_gib=round(peak, 3), measured_activations_gib=round(activations, 3),
                   predicted_plus_activations_gib=round(states + activations, 3),
                   peak_over_prediction=round(peak / (states + activations), 3))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny model and a few steps (CPU, under a minute)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "runs")), help="folder for device_check.json")
    args = parser.parse_args()
    spec = SMOKE if args.smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    began = time.perf_counter()
    rate = matmul_rate(spec["matmul"], device)
    print(f"device {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}, torch {torch.__version__}; "
          f"bf16 {spec['matmul']}² product: {rate / 1e12:.1f} TFLOP/s", flush=True)
    weights, pretrained = pretrain(spec, device)
    print(f"pretrain: {pretrained['steps']} steps in {pretrained['seconds']} s, {pretrained['tokens_per_s']:,} tokens/s, "
          f"loss {pretrained['losses'][0]} -> {pretrained['losses'][-1]}", flush=True)
    rows = []
    for checkpointing in (False, True):
        row = finetune(spec, weights, device, checkpointing, rate)
        rows.append(row)
        memory = (f"; peak {row['max_allocated_gib']} GiB vs states {row['predicted_states_gib']} + activations "
                  f"{row['measured_activations_gib']} = {row['predicted_plus_activations_gib']} GiB "
                  f"(x{row['peak_over_prediction']})" if "max_allocated_gib" in row else "")
        print(f"finetune, checkpointing {checkpointing}: {row['tokens_per_s']:,} tokens/s, MFU "
              f"{row['mfu_h200_peak']:.1%} of the H200 peak, {row['mfu_measured_matmul']:.1%} of the measured product"
              f"{memory}", flush=True)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "smoke": args.smoke, "model": spec["model"], "batch": spec["batch"], "length": spec["length"],
              "matmul_bf16_flops": rate, "h200_bf16_peak_flops": H200_BF16_PEAK, "pretrain": pretrained,
              "finetune": rows, "seconds": round(time.perf_counter() - began, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'device_check.json'} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
