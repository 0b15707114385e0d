"""Merge: fine-tune on each task, then merge the task vectors (``components/merging.py``).

Before the stream the trainable weights are theta_0 (a parameter that first becomes trainable later,
such as a new head block, is taken when it does: it was unchanged until then). Each task trains all
the learner trains, from theta_0 (``start: base``, as in the merging papers) or from the model the
stream has (``start: merged``); its task vector is what that training changed,
tau_t = theta_t - (the weights task t started from). After the task the model is set to
theta_0 + merge(tau_1..tau_t), and is evaluated, checkpointed and carried on with that way.

With ``start: base`` every tau_t is measured from theta_0, as in Ilharco et al. and Yadav et al. With
``start: merged`` (the default: a practitioner continues from the model they have, and later tasks
build on what earlier ones learned) tau_t is task t's own increment: theta_0 + sum_t tau_t is then the
sequentially fine-tuned model, so ``task_arithmetic`` at scale 1 is plain sequential fine-tuning,
while vectors measured from theta_0 would count every earlier task's vector again inside each later one.

theta_0 and the task vectors are kept in float32 on the CPU: (T + 1) copies of the trained weights,
about 2.7 GB for a 135M-parameter model over 4 tasks (one copy more while a task trains: where it started).
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator

from .base import Method, MethodConfig
from .components import merging
from .components.snapshots import assign, snapshot


class MergeConfig(MethodConfig):
    how: Literal["mean", "task_arithmetic", "ties"] = "ties"
    # lambda; None: 1.0 for ties (Yadav et al.'s default when no validation set picks it), 0.4 for
    # task_arithmetic (Ilharco et al. pick it on validation data; over several tasks it lands near 0.3-0.5)
    scale: float | None = Field(None, gt=0)
    density: float = Field(0.2, gt=0, le=1)          # ties: fraction of each tensor's coordinates kept (top-k 20%)
    start: Literal["base", "merged"] = "merged"      # what each task is fine-tuned from

    @field_validator("scale")
    @classmethod
    def _scale_needs_a_sum(cls, scale, info):
        if scale is not None and info.data.get("how") == "mean":
            raise ValueError("how: mean averages the task vectors; scale is for task_arithmetic and ties")
        return scale


class Merge(Method):
    name = "merge"
    Config = MergeConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.theta0: dict[str, torch.Tensor] = {}
        self.tasks: list[dict[str, torch.Tensor]] = []      # tau_1..tau_t
        self.start: dict[str, torch.Tensor] = {}
        self.summary: dict = {}
        self.scale = cfg.scale if cfg.scale is not None else {"ties": 1.0, "task_arithmetic": 0.4}.get(cfg.how)

    def before_task(self, task):
        super().before_task(task)
        params = self.trainable()
        self.theta0 = {**snapshot({n: p for n, p in params.items() if n not in self.theta0}, torch.float32), **self.theta0}
        if self.cfg.start == "base":
            assign(params, {n: self.theta0[n] for n in params})
        self.start = snapshot(params, torch.float32)

    def after_task(self, task):
        super().after_task(task)
        trained = snapshot({n: p for n, p in self.trainable().items() if n in self.start}, torch.float32)
        self.tasks.append({n: w - self.start[n] for n, w in trained.items()})
        self.start = {}
        merged = self.merged()
        assign(dict(self.learner.named_parameters()), {n: theta + merged[n] for n, theta in self.theta0.items() if n in merged})
        nonzero, size = sum(int(m.count_nonzero()) for m in merged.values()), sum(m.numel() for m in merged.values())
        self.summary = {"task_vector_norm": _norm(self.tasks[-1].values()), "merged_norm": _norm(merged.values()),
                        "kept": nonzero / max(1, size)}

    def merged(self) -> dict[str, torch.Tensor]:
        """merge(tau_1..tau_t) by ``how``."""
        if self.cfg.how == "mean":
            return merging.mean(self.tasks)
        if self.cfg.how == "task_arithmetic":
            return merging.task_arithmetic(self.tasks, self.scale)
        return merging.ties(self.tasks, self.cfg.density, self.scale)

    def task_summary(self, task):
        """The new task vector's and the merged vector's L2 norms, and the fraction of the merged vector's
        coordinates that are not zero (what TIES kept)."""
        return {**super().task_summary(task), **self.summary}

    def state(self):
        out = {f"merge.theta0.{n}": t for n, t in self.theta0.items()}
        out.update({f"merge.tau.{i}.{n}": t for i, tau in enumerate(self.tasks) for n, t in tau.items()})
        return {**super().state(), **out}

    def load_state(self, state):
        super().load_state(state)
        self.theta0 = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("merge.theta0.")}
        tau = [k.split(".", 3)[2:] for k in state if k.startswith("merge.tau.")]
        self.tasks = [{} for _ in range(1 + max((int(i) for i, _ in tau), default=-1))]
        for i, n in tau:
            self.tasks[int(i)][n] = state[f"merge.tau.{i}.{n}"]


def _norm(tensors) -> float:
    return sum(t.double().pow(2).sum().item() for t in tensors) ** 0.5
