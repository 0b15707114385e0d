"""DER++: "Dark Experience for General Continual Learning: a Strong, Simple Baseline"
(Buzzega et al., NeurIPS 2020).

A reservoir memory filled during training with each example's label and the logits the model
gave it then. Each step adds alpha * MSE(current logits, stored logits) on one memory batch and
beta * cross-entropy on the labels of another (the paper's defaults vary; 0.1 / 0.5 are common).
"""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodConfig
from .components.memory import ReplayConfig


class DERConfig(MethodConfig):
    replay: ReplayConfig = ReplayConfig()
    alpha: float = Field(0.1, ge=0)            # weight of the logit-matching term
    beta: float = Field(0.5, ge=0)             # weight of the memory's label term


class DERPP(Method):
    name = "der++"
    not_distributed = "fills its memory from each step's batch, which differs per rank"
    kinds = frozenset({"classification"})
    Config = DERConfig
    task_free = True

    def loss(self, batch, out):
        loss = F.cross_entropy(out.logits, batch["labels"])
        if len(self.memory) > 0:
            first = self.memory_batch()
            stored = self.memory.payload[first["memory_index"]].to(out.logits.device)
            now = self.learner.head(self.learner.encode(first))
            loss = loss + self.cfg.alpha * F.mse_loss(now, stored)
            second = self.memory_batch()
            loss = loss + self.cfg.beta * F.cross_entropy(self.learner(second).logits, second["labels"])
        raw = self.learner.head(out.features).detach()            # all classes' outputs, unmasked
        self.memory.add(batch["task_ids"].cpu(), batch["example_ids"], batch["labels"].cpu(), raw.cpu())
        return loss + self.penalty(batch, out)

    def after_task(self, task):
        """The memory is filled while training, not after the task."""

    def observe(self, inputs):
        """The memory is filled while training (with the logits), not by observing."""
