"""Multi-head: a classifier head per task, chosen by the task id at test time; with ``branch: true``
also a copy of the backbone per task (task branching: nothing is shared, so nothing is forgotten).

The task-incremental baseline (multi-head evaluation, cf. Chaudhry et al., "Riemannian Walk",
ECCV 2018). In a class-incremental stream it is an oracle: it is told the task id that the other
methods must do without, so compare it with them as an upper reference, not as a peer.
"""
from __future__ import annotations

import copy

from ..errors import UserError
from .base import Method, MethodConfig


class MultiHeadConfig(MethodConfig):
    branch: bool = False       # a separate copy of the (pretrained) backbone per task


class MultiHead(Method):
    name = "multihead"
    kinds = frozenset({"classification"})
    Config = MultiHeadConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        if learner.scenario == "domain_incremental":
            raise UserError("method.name: multihead needs tasks with their own classes "
                            "(class_incremental or task_incremental), not domain_incremental")
        learner.task_id_at_test = True
        self.branches = [copy.deepcopy(learner.backbone) for _ in ctx.stream.tasks] if cfg.branch else None

    def before_task(self, task):
        if self.branches is not None:
            self.learner.backbone = self.branches[task.index].to(self.ctx.device)

    def eval_task(self, task):
        if self.branches is not None:
            self.learner.backbone = self.branches[task.index].to(self.ctx.device)

    @property
    def per_task_encoder(self):
        return self.branches is not None

    def state(self):
        out = super().state()
        for t, branch in enumerate(self.branches or []):
            # cloned: a tied LM head shares the embedding's tensor, which safetensors will not save twice
            out.update({f"branch.{t}.{n}": p.detach().clone() for n, p in branch.state_dict().items()})
        return out

    def load_state(self, state):
        super().load_state(state)
        for t, branch in enumerate(self.branches or []):
            prefix = f"branch.{t}."
            branch.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
