"""Benchmark 1, training-loop overhead: the engine's ``seq`` steps against a plain PyTorch loop that
does the same forward, backward, clipping and AdamW steps on the same batches.

Both start from the same weights, draw the same shuffled batches and use the same (fused) AdamW;
after timing, their weights are compared, so the two loops are shown to have done the same work.
The figure is the ratio of the fastest rounds' wall times (engine / plain; target ≤ 1.10).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from rich.console import Console

from ..experiment import load_config
from ..engine import Engine
from ..models.backbones import pool
from ..train.loop import train_task
from .common import MINILM, fastest, interleaved

TARGET = 1.10


def setting(quick: bool) -> dict:
    backbone = {"arch": "bert", "size": "tiny", "max_length": 32} if quick else {"name": MINILM, "max_length": 32}
    return {"seed": 0, "backbone": backbone,
            "data": {"name": "clinc150", "scenario": "class_incremental", "classes_per_task": 10, "max_tasks": 1,
                     "max_train_per_class": 8 if quick else 32, "max_test_per_class": 2},
            "method": {"name": "seq"},
            "train": {"max_steps": 5 if quick else 20, "batch_size": 16, "progress": False,
                      "group_by_length": False}}     # the same batches as the plain loop: overhead alone


def plain_loop(model: torch.nn.Module, head: torch.nn.Module, tokens: list[list[int]], labels: torch.Tensor, *,
               steps: int, batch_size: int, seed: int, pad_id: int, lr_backbone: float, lr_head: float,
               weight_decay: float, grad_clip: float, pooling: str) -> None:
    """What a user writes by hand: shuffle, pad, forward, cross-entropy, backward, clip, AdamW."""
    optimizer = torch.optim.AdamW([{"params": list(model.parameters()), "lr": lr_backbone},
                                   {"params": list(head.parameters()), "lr": lr_head}], weight_decay=weight_decay,
                                  fused=True)       # as the engine: the comparison is of the loops, not the kernels
    params = list(model.parameters()) + list(head.parameters())
    generator = torch.Generator().manual_seed(seed)
    step, n = 0, len(tokens)
    model.train()
    while step < steps:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            if step == steps:
                break
            idx = order[i: i + batch_size]
            rows = [torch.tensor(tokens[j]) for j in idx.tolist()]
            ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad_id)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(r) for r in rows], batch_first=True)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            loss = F.cross_entropy(head(pool(hidden, mask, pooling)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            step += 1


def run(quick: bool = False, rounds: int | None = None) -> dict:
    cfg = load_config(setting(quick))
    engine = Engine(cfg)
    learner, method, task = engine.learner, engine.method, engine.stream.tasks[0]
    learner.begin_task(task)
    method.before_task(task)
    inputs = method.training_inputs(task, [task])
    initial = copy.deepcopy(learner.state_dict())
    quiet = Console(quiet=True)
    backbone = learner.backbone
    finals = {}

    def forgetlab() -> None:
        learner.load_state_dict(initial)
        torch.manual_seed(1)                      # the same dropout draws in both loops
        train_task(learner, method, inputs, cfg.train, seed=1, device=engine.device, pad_id=backbone.pad_id,
                   label="bench", console=quiet)
        finals["forgetlab"] = copy.deepcopy(learner.state_dict())

    def plain() -> None:
        learner.load_state_dict(initial)
        torch.manual_seed(1)
        plain_loop(backbone.model, learner.head, inputs.tokens, inputs.labels, steps=cfg.train.max_steps,
                   batch_size=cfg.train.batch_size, seed=1, pad_id=backbone.pad_id,
                   lr_backbone=cfg.train.lr_backbone, lr_head=cfg.train.lr_head,
                   weight_decay=cfg.train.weight_decay, grad_clip=cfg.train.grad_clip, pooling=backbone.pooling)
        finals["plain"] = copy.deepcopy(learner.state_dict())

    times = interleaved({"plain": plain, "forgetlab": forgetlab}, rounds or (2 if quick else 5))
    gap = max((finals["forgetlab"][k].float() - finals["plain"][k].float()).abs().max().item() for k in initial)
    ratio = fastest(times["forgetlab"]) / fastest(times["plain"])
    steps = cfg.train.max_steps
    return {"name": "loop", "figure": ratio, "target": f"<= {TARGET}", "met": ratio <= TARGET,
            "plain_ms_per_step": 1000 * fastest(times["plain"]) / steps,
            "forgetlab_ms_per_step": 1000 * fastest(times["forgetlab"]) / steps,
            "max_weight_difference": gap, "steps": steps, "times": times,
            "setting": f"{backbone.source}, batch {cfg.train.batch_size}, {steps} steps, {len(inputs)} examples"}
