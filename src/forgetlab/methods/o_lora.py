"""O-LoRA: "Orthogonal Subspace Learning for Language Model Continual Learning" (Wang et al., EMNLP 2023
Findings).

Incremental LoRA (``inc_lora``: a new LoRA per task, earlier ones frozen, all summed at test time) plus
two terms in the loss while task t trains, over every adapted layer:
lambda1 * sum_{i,j} |A_old A_t^T|_{ij} (A_old: the down-projections A [r, d_in] of tasks 0..t-1
stacked; ``components/subspace.py``) and lambda2 * (||A_t||_2 + ||B_t||_2), the Frobenius norms
(not squared) of the new LoRA's A and B, as the released code's ``training_step`` has them.
``task_summary`` reports, per task, the means over its loss calls of the task loss, the orthogonality
term and the L2 term (unweighted), and the new LoRA's update norm: sum over adapted layers of
||(alpha / r) B_t A_t||_F, to tell an orthogonality term that swamps the task loss, or a new LoRA
that shrinks to zero.
"""
from __future__ import annotations

import torch
from pydantic import Field

from .components.subspace import orthogonality
from .inc_lora import IncLoRA, IncLoRAConfig


class OLoRAConfig(IncLoRAConfig):
    lambda1: float = Field(0.5, ge=0)     # orthogonality weight: 0.5 in the paper and its scripts
    lambda2: float = Field(0.0, ge=0)     # L2 weight on the new A and B: 0 in the released scripts


class OLoRA(IncLoRA):
    name = "o_lora"
    Config = OLoRAConfig

    def before_task(self, task):
        super().before_task(task)
        self.index = task.index
        self.sums = {"task_loss": 0.0, "orthogonality": 0.0, "l2": 0.0}
        self.calls = 0

    def terms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The orthogonality and L2 terms of the LoRA of the task being trained."""
        new, old = self.adapter_names[self.index], self.adapter_names[: self.index]
        orth = l2 = torch.zeros((), device=self.ctx.device)
        for layer in self.lora_layers():
            a, b = layer.lora_A[new].weight, layer.lora_B[new].weight
            if old:
                orth = orth + orthogonality(torch.cat([layer.lora_A[k].weight for k in old]), a)
            l2 = l2 + a.norm() + b.norm()
        return orth, l2

    def loss(self, batch, out):
        task_loss = super().loss(batch, out)
        orth, l2 = self.terms()
        for key, term in (("task_loss", task_loss), ("orthogonality", orth), ("l2", l2)):
            self.sums[key] = self.sums[key] + term.detach()       # no device sync per step
        self.calls += 1
        return task_loss + self.cfg.lambda1 * orth + self.cfg.lambda2 * l2

    def update_norm(self) -> float:
        new = self.adapter_names[self.index]
        with torch.no_grad():
            return sum((layer.scaling[new] * layer.lora_B[new].weight @ layer.lora_A[new].weight).norm().item()
                       for layer in self.lora_layers())

    def task_summary(self, task):
        means = {k: float(v) / max(self.calls, 1) for k, v in self.sums.items()}
        return {**super().task_summary(task), **means, "update_norm": self.update_norm()}
