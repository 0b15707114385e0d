"""``forgetlab pretrain``: a small causal LM trained from scratch on a text corpus.

The output folder holds the tokenizer, ``checkpoints/step-NNNNNN/`` (safetensors weights, the
Hugging Face config and the tokenizer: each loads with ``AutoModelForCausalLM.from_pretrained`` and
as a ``backbone.name`` in ``forgetlab run``), ``config.yaml`` (resolved) and ``pretrain.json``:
one record per checkpoint with its step, tokens seen and validation perplexity.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console

from ..config import PretrainConfig
from ..data.corpus import corpus_splits
from ..errors import UserError
from ..models.bpe import EOS, train_bpe
from ..models.backbones import PRETRAINING_RECORD
from ..models.causal_lm import token_nll
from ..models.lm_families import build_lm, non_embedding_params
from ..runtime import environment, pick_device, seed_everything, write_json


def pretrain(cfg: PretrainConfig, out: Path | None = None, console: Console | None = None) -> dict:
    """Train, checkpoint and evaluate; returns the ``pretrain.json`` record."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    console = console or Console(stderr=True)
    out = Path(out or cfg.out or f"runs/pretrain/{cfg.model.arch}-{cfg.model.size}-seed{cfg.seed}")
    done = finished(cfg, out)
    if done is not None:
        console.print(f"pretrain {out}: already done with this config, {done['steps']} steps")
        return done
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    device = pick_device(cfg.train.device)
    seed_everything(cfg.seed)

    train_docs, valid_docs = corpus_splits(cfg.corpus, cfg.seed)
    tokenizer = train_bpe(train_docs, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
    train_ids = token_stream(tokenizer, train_docs)
    valid_ids = token_stream(tokenizer, valid_docs)[: cfg.train.eval_tokens + 1]
    window = cfg.model.seq_len + 1
    if len(train_ids) < window * cfg.train.batch_size or len(valid_ids) < 2:
        raise UserError(f"corpus: {len(train_ids)} training tokens, fewer than one batch of "
                        f"{cfg.train.batch_size} × {window} (lower train.batch_size or model.seq_len)")
    eos = tokenizer.convert_tokens_to_ids(EOS)
    model = build_lm(cfg.model, len(tokenizer), tokenizer.pad_token_id, eos).to(device)
    windows_per_epoch = len(train_ids) // window
    steps = cfg.train.steps or math.ceil(cfg.train.epochs * windows_per_epoch / cfg.train.batch_size)
    saves = sorted({s for s in cfg.train.save_steps if 0 < s < steps} | {steps})

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    record = {"config": cfg.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
              "non_embedding_parameters": non_embedding_params(model), "vocab_size": len(tokenizer),
              "train_tokens": len(train_ids), "valid_tokens": len(valid_ids), "steps": steps,
              "tokens_per_step": cfg.train.batch_size * cfg.model.seq_len, "checkpoints": [],
              "environment": environment(cfg.seed, device)}
    console.print(f"pretrain {cfg.model.arch}-{cfg.model.size}: {record['parameters']:,} parameters, "
                  f"{len(train_ids):,} training tokens, {steps} steps")

    optimizer = make_optimizer(model, cfg, device)
    train_step = make_train_step(model, optimizer, cfg, device)
    batches = _batches(train_ids, window, cfg.train.batch_size, cfg.seed)
    start, recent = time.perf_counter(), []
    model.train()
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, steps, cfg)
        recent.append(train_step(next(batches).to(device)).item())
        if step in saves:
            ppl = validation_perplexity(model, valid_ids, window, cfg.train.batch_size, device)
            folder = out / "checkpoints" / f"step-{step:06d}"
            model.save_pretrained(str(folder))          # safetensors by default
            tokenizer.save_pretrained(str(folder))
            record["checkpoints"].append({"step": step, "tokens": step * record["tokens_per_step"],
                                          "train_loss": sum(recent) / len(recent), "valid_perplexity": ppl,
                                          "seconds": time.perf_counter() - start, "path": str(folder)})
            write_json(folder / PRETRAINING_RECORD, {k: record["checkpoints"][-1][k] for k in
                                                     ("step", "tokens", "valid_perplexity")})
            console.print(f"step {step}/{steps}: train loss {record['checkpoints'][-1]['train_loss']:.3f}, "
                          f"valid perplexity {ppl:.2f}")
            recent = []
            model.train()
    write_json(out / "pretrain.json", record)
    return record


def finished(cfg: PretrainConfig, out: Path) -> dict | None:
    """The ``pretrain.json`` record of a finished pretraining with this very config in ``out``, else None."""
    path = out / "pretrain.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("config") == cfg.to_dict() else None


def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """The documents' tokens, each followed by the end-of-text token, as one 1-D tensor."""
    eos = tokenizer.convert_tokens_to_ids(EOS)
    ids = []
    for piece in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(piece)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def make_train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: PretrainConfig,
                    device: torch.device):
    """One optimizer step on a batch of windows, as ``cfg.train`` sets it (precision, compile, clipping);
    returns the loss. ``forgetlab bench`` times this same function."""
    forward = torch.compile(model) if cfg.train.compile else model
    bf16 = cfg.train.precision == "bf16"

    def step(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = lm_loss(forward, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        return loss.detach()

    return step


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of full windows [B, L+1]."""
    nll, _ = token_nll(model(input_ids=batch[:, :-1]).logits, batch)
    return nll.mean()


@torch.inference_mode()
def validation_perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int, batch_size: int,
                          device: torch.device) -> float:
    """exp(mean next-token NLL) over consecutive windows of the validation tokens."""
    model.eval()
    chunks = [ids[s: s + window] for s in range(0, len(ids) - 1, window - 1)]
    full = [c for c in chunks if len(c) == window]
    groups = [full[i: i + batch_size] for i in range(0, len(full), batch_size)]
    groups += [[c] for c in chunks if 1 < len(c) < window]       # a short last chunk, alone
    total, count = 0.0, 0
    for group in groups:
        batch = torch.stack(group).to(device)
        nll, _ = token_nll(model(input_ids=batch[:, :-1]).logits, batch)
        total += nll.sum().item()
        count += nll.numel()
    return math.exp(total / count)


def _batches(ids: torch.Tensor, window: int, batch_size: int, seed: int):
    """Endless batches of non-overlapping windows; each epoch a new random offset and window order."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        offset = int(torch.randint(0, window, (1,), generator=generator))
        usable = (len(ids) - offset) // window
        if usable < batch_size:
            offset, usable = 0, len(ids) // window
        windows = ids[offset: offset + usable * window].view(usable, window)
        order = torch.randperm(usable, generator=generator)
        for i in range(0, usable - batch_size + 1, batch_size):
            yield windows[order[i: i + batch_size]]


def make_optimizer(model: torch.nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused where the device has it); no weight decay on biases, norms and embeddings' 1-D parts."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.train.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.95), fused=device.type in ("cpu", "cuda"))


def _lr(step: int, steps: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to ``lr × min_lr_ratio`` at the last step."""
    lr, warmup = cfg.train.lr, cfg.train.warmup_steps
    if step <= warmup:
        return lr * step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (cfg.train.min_lr_ratio + (1 - cfg.train.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
