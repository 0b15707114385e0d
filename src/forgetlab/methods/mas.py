"""MAS: "Memory Aware Synapses: Learning what (not) to forget" (Aljundi et al., ECCV 2018).

After each task, a parameter's importance is the mean absolute gradient of the squared L2 norm
of the model's output, ||f(x)||^2, over the task's data (no labels needed); importances add up
across tasks. Later tasks add lam * sum_i Omega_i (theta_i - theta*_i)^2.
The penalty's value joins the logged loss; its gradient is added to ``.grad`` after the backward
pass, without an autograd graph (``components/penalty.py``).
"""
from __future__ import annotations

from pydantic import Field

from .base import Method, MethodConfig
from .components.importance import mas_importance
from .components.penalty import QuadraticPenalty


class MASConfig(MethodConfig):
    lam: float = Field(1.0, ge=0)
    importance_examples: int | None = Field(None, ge=1)   # examples per task to estimate Omega on (None: all)


class MAS(Method):
    name = "mas"
    Config = MASConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.consolidated = QuadraticPenalty()

    def penalty(self, batch, out):
        return self.cfg.lam * self.consolidated.value(dict(self.learner.named_parameters()))

    def after_backward(self):
        super().after_backward()
        self.consolidated.add_gradient(dict(self.learner.named_parameters()), self.cfg.lam)

    def after_task(self, task):
        super().after_task(task)
        data = self.ctx.training_sample(task, self.cfg.importance_examples)
        params = self.trainable()
        omega = mas_importance(self.learner, params, data, self.ctx.batch)
        self.consolidated.merge(omega, params, decay=1.0)     # Omega accumulates over tasks

    def state(self):
        return {**super().state(), **self.consolidated.state()}

    def load_state(self, state):
        super().load_state(state)
        self.consolidated.load_state(state)
