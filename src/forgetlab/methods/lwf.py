"""LwF: "Learning without Forgetting" (Li & Hoiem, ECCV 2016 / TPAMI 2017).

Before a new task, keep a frozen copy of the model. While training, add lam_o times the
distillation loss between the copy's and the model's outputs for the old classes on the new
data, at temperature T (the paper: T = 2, lam_o = 1, no T^2 factor). Old classes are distilled
as one distribution in class- and domain-incremental streams, one per old task in
task-incremental ones. Composes with replay: ``{name: lwf, replay: {size: 200}}``.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field

from .base import Method, MethodConfig
from .components.distill import distillation_loss


class LwFConfig(MethodConfig):
    lam: float = Field(1.0, ge=0)             # lambda_o, the weight of the distillation loss
    temperature: float = Field(2.0, gt=0)


class LwF(Method):
    name = "lwf"
    kinds = frozenset({"classification"})
    Config = LwFConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.teacher = None
        self.groups: list[torch.Tensor] = []

    def before_task(self, task):
        if task.index == 0:
            return
        self.teacher = copy.deepcopy(self.learner).eval().requires_grad_(False)
        self.teacher.tasks_seen = task.index            # the teacher predicts only what it was trained on
        old = self.learner.task_classes[: task.index]
        if self.learner.scenario == "task_incremental":
            self.groups = [torch.tensor(c) for c in old]
        else:
            self.groups = [torch.tensor(sorted({c for classes in old for c in classes}))]

    def penalty(self, batch, out):
        if self.teacher is None:
            return out.logits.new_zeros(())
        with torch.no_grad():
            teacher = self.teacher.head(self.teacher.encode(batch))
        student = self.learner.head(out.features)
        return self.cfg.lam * distillation_loss(student, teacher, self.cfg.temperature, self.groups)
