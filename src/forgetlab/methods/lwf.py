"""LwF: "Learning without Forgetting" (Li & Hoiem, ECCV 2016 / TPAMI 2017).

Before a new task, keep a frozen copy of the model. While training, add lam_o times the
distillation loss between the copy's and the model's outputs for the old classes on the new
data, at temperature T (the paper: T = 2, lam_o = 1, no T^2 factor). Old classes are distilled
as one distribution in class- and domain-incremental streams, one per old task in
task-incremental ones. On an instruction stream the outputs are the next-token distributions at
the new data's response tokens (the whole vocabulary as one distribution), as LwF is applied to
LLMs. Composes with replay: ``{name: lwf, replay: {size: 200}}``.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field

from ..models.learner import Classifier
from .base import Method, MethodConfig
from .components.distill import distillation_loss


class LwFConfig(MethodConfig):
    lam: float = Field(1.0, ge=0)             # lambda_o, the weight of the distillation loss
    temperature: float = Field(2.0, gt=0)


class LwF(Method):
    name = "lwf"
    kinds = frozenset({"classification", "instruction"})
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
        if not isinstance(self.learner, Classifier):    # a language model: its whole next-token distribution
            self.groups = []
            return
        old = self.learner.task_classes[: task.index]
        if self.learner.scenario == "task_incremental":
            self.groups = [torch.tensor(c) for c in old]
        else:
            self.groups = [torch.tensor(sorted({c for classes in old for c in classes}))]

    def penalty(self, batch, out):
        if self.teacher is None:
            return out.logits.new_zeros(())
        if not self.groups:
            with torch.no_grad():
                teacher = self.teacher(batch).logits
            return self.cfg.lam * distillation_loss(out.logits, teacher, self.cfg.temperature)
        with torch.no_grad():
            teacher = self.teacher.head(self.teacher.encode(batch))
        student = self.learner.head(out.features)
        return self.cfg.lam * distillation_loss(student, teacher, self.cfg.temperature, self.groups)
