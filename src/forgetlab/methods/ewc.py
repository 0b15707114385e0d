"""EWC: "Overcoming catastrophic forgetting in neural networks" (Kirkpatrick et al., PNAS 2017), and
online EWC from "Progress & Compress" (Schwarz et al., ICML 2018).

After each task, estimate the diagonal Fisher F of the trainable parameters on the task's data
and anchor them; while training later tasks add (lam / 2) * sum_i F_i (theta_i - theta*_i)^2,
summed over past tasks. Online EWC keeps one running Fisher, F <- gamma * F + F_t. On an online
stream (no tasks) the Fisher is taken at each pseudo-boundary (``online.boundary_every`` steps) on the
examples since the last one, and always merged as online EWC.
The penalty's value joins the logged loss; its gradient is added to ``.grad`` after the backward
pass, without an autograd graph (``components/penalty.py``).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from .base import Method, MethodConfig
from .components.importance import diagonal_fisher
from .components.penalty import QuadraticPenalty


class EWCConfig(MethodConfig):
    lam: float = Field(5000.0, ge=0)                  # penalty strength lambda
    online: bool = False                              # one running Fisher instead of one per task
    gamma: float = Field(1.0, ge=0, le=1)             # online EWC's decay of the old Fisher
    fisher: Literal["true", "empirical"] = "true"     # targets drawn from the model, or the data's
    fisher_examples: int | None = Field(None, ge=1)   # examples per task to estimate F on (None: all)


class EWC(Method):
    name = "ewc"
    Config = EWCConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.consolidated = QuadraticPenalty()

    def penalty(self, batch, out):
        return self.cfg.lam / 2 * self.consolidated.value(dict(self.learner.named_parameters()))

    def after_backward(self):
        super().after_backward()
        self.consolidated.add_gradient(dict(self.learner.named_parameters()), self.cfg.lam / 2)

    def after_task(self, task):
        super().after_task(task)
        self.consolidate(self.ctx.training_sample(task, self.cfg.fisher_examples), self.cfg.online)

    def boundary(self, inputs):
        """An online stream's pseudo-boundary: the Fisher on (up to ``fisher_examples`` of) the examples
        since the last one, merged as online EWC (one running Fisher, decayed by gamma)."""
        limit = self.cfg.fisher_examples
        self.consolidate(inputs if limit is None else inputs.subset(torch.randperm(len(inputs))[:limit]), online=True)

    def consolidate(self, data, online: bool) -> None:
        """Anchor the trainable parameters with the Fisher on ``data``: merged into one running Fisher
        (online EWC) or added as one more term."""
        params = self.trainable()
        fisher = diagonal_fisher(self.learner, params, data, self.ctx.batch, self.cfg.fisher)
        if online:
            self.consolidated.merge(fisher, params, self.cfg.gamma)
        else:
            self.consolidated.add(fisher, params)

    def state(self):
        return {**super().state(), **self.consolidated.state()}

    def load_state(self, state):
        super().load_state(state)
        self.consolidated.load_state(state)
