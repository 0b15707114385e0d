"""The one training loop: AdamW with separate backbone/head learning rates, clipping, progress."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from typing import TYPE_CHECKING

from .. import distributed
from ..config import TrainConfig
from ..models.learner import Learner
from ..runtime import bf16_supported
from .batching import Inputs, epoch_batches, make_batch

if TYPE_CHECKING:                       # methods build on train.batching: no import at run time
    from ..methods.base import Method


@dataclass
class TrainStats:
    steps: int
    examples: int
    loss: float          # mean loss over the last epoch's steps
    seconds: float
    trainable: int = 0   # parameters the optimizer updated


def make_optimizer(method: "Method", cfg: TrainConfig) -> torch.optim.Optimizer | None:
    """AdamW over the method's parameter groups (by default backbone at ``lr_backbone``, head at ``lr_head``);
    the fused kernel on CPU and CUDA (a third faster per MiniLM step on CPU: ``forgetlab bench --only optimisations``)."""
    groups = [g for g in method.param_groups(cfg) if g["params"]]
    if not groups:
        return None
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fusable(groups))


def fusable(groups: list[dict]) -> bool:
    """Whether every parameter is a float tensor on a device with a fused AdamW kernel (not FSDP's shards)."""
    from torch.distributed.tensor import DTensor

    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() and not isinstance(p, DTensor)
               for g in groups for p in g["params"])


class Stepper:
    """The step code ``train_task`` and the online loop share: a batch's forward (under bf16 autocast
    where asked for and the device has it) and backward, then every ``cfg.grad_accum`` batches the
    method's ``after_backward``, clipping, the optimizer step and ``after_step``."""

    def __init__(self, learner: Learner, method: "Method", cfg: TrainConfig, device: torch.device):
        self.learner, self.method, self.cfg = learner, method, cfg
        self.bf16 = cfg.precision == "bf16" and bf16_supported(device)
        self.device, self.micro = device, 0
        self.ranks = distributed.current()
        self.model: torch.nn.Module = learner
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[torch.nn.Parameter] = []
        self.rebuild()

    def rebuild(self) -> None:
        """A new optimizer over what the method trains now (it may have changed), keeping the optimizer
        state of the parameters the old one trained."""
        old = self.optimizer
        self.model = self.ranks.wrap(self.learner)          # over several processes: over what trains now
        self.optimizer = make_optimizer(self.method, self.cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]] if self.optimizer else []
        if old is not None and self.optimizer is not None:
            for p in self.params:
                if p in old.state:
                    self.optimizer.state[p] = old.state[p]
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def batch(self, batch: dict, standin: bool = False) -> tuple[float, bool]:
        """Train on one batch (over several processes: this rank's share of it; ``standin``: an empty
        share, see ``Ranks.sharded_step``): the loss (of the whole batch), and whether an optimizer step followed."""
        cfg = self.cfg
        self.micro += 1
        last = self.micro % cfg.grad_accum == 0
        with self.ranks.no_sync(self.model, skip=not last), self.ranks.sharded_step(standin):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.method.loss(batch, self.model(batch))
            (loss / cfg.grad_accum).backward()
        value = self.ranks.sum([loss.item()])[0] / self.ranks.world
        if not last:
            return value, False
        self.method.after_backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.optimizer.step()
        self.method.after_step()
        self.optimizer.zero_grad(set_to_none=True)
        return value, True


def train_task(learner: Learner, method: "Method", inputs: Inputs, cfg: TrainConfig, *, seed: int,
               device: torch.device, pad_id: int, label: str, console: Console) -> TrainStats:
    """Train on ``inputs`` for ``cfg.epochs`` epochs (or ``cfg.max_steps`` optimizer steps), shuffled by ``seed``;
    with ``cfg.group_by_length``, token batches hold examples of similar length (``epoch_batches``). An
    optimizer step averages the losses of ``cfg.grad_accum`` batches; ``cfg.precision: bf16`` runs the
    forward under bf16 autocast where the device has it (else in the weights' dtype); ``cfg.packing`` packs each batch's examples into as few rows as fit.
    Over several processes each rank trains on its share of every batch (``distributed.py``)."""
    stepper = Stepper(learner, method, cfg, device)
    ranks = stepper.ranks
    n = len(inputs)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.max_steps or math.ceil(cfg.epochs * per_epoch / cfg.grad_accum)
    if stepper.optimizer is None or total == 0:
        ranks.full_weights(learner)
        return TrainStats(0, 0, float("nan"), 0.0)
    generator = torch.Generator().manual_seed(seed)
    lengths = [len(t) for t in inputs.tokens] if cfg.group_by_length and inputs.tokens is not None else None
    if cfg.gradient_checkpointing:
        set_gradient_checkpointing(learner, True)
    learner.train()
    start, step, seen, recent = time.perf_counter(), 0, 0, []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]:.4f}  {task.fields[rate]:.0f} ex/s"), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=True, disable=not (cfg.progress and console.is_terminal)) as bar:
        job = bar.add_task(label, total=total, loss=float("nan"), rate=0.0)
        while step < total:
            recent = []
            for idx in epoch_batches(n, cfg.batch_size, generator, lengths):
                if step == total:
                    break
                mine = ranks.shard(idx)
                batch = make_batch(inputs, mine if len(mine) else idx[:1], pad_id, device,
                                   pack_length=learner.backbone.max_length if cfg.packing else None)
                loss, stepped = stepper.batch(batch, standin=not len(mine))
                seen += len(idx)
                recent.append(loss)
                if not stepped:
                    continue
                step += 1
                bar.update(job, advance=1, loss=recent[-1], rate=seen / (time.perf_counter() - start))
    if cfg.gradient_checkpointing:
        set_gradient_checkpointing(learner, False)
    ranks.full_weights(learner)
    learner.eval()
    return TrainStats(step, seen, sum(recent) / max(len(recent), 1), time.perf_counter() - start,
                      sum(p.numel() for p in stepper.params))


def set_gradient_checkpointing(learner: Learner, on: bool) -> None:
    """Turn transformers' gradient checkpointing of the backbone on or off (models that have it)."""
    model = learner.backbone.model
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(model, "supports_gradient_checkpointing", False):
        return
    new = hasattr(model, "activation_checkpointing_enable")       # the name from transformers 5.x on
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
