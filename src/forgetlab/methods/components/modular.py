"""Parameter-efficient modules on a frozen backbone: one shared module, or one per task.

The base weights never change; only the active module (and the head) trains. With one module
per task the task's module is selected by its task id, for training and for testing, so that
needs a stream whose task id is known at test time (task-incremental, instruction).
"""
from __future__ import annotations

from pydantic import Field

from ...errors import UserError
from ..base import Method, MethodConfig

TASK_ID_AT_TEST = ("task_incremental", "instruction")   # each task is tested apart: its module can be chosen


class ModularConfig(MethodConfig):
    per_task: bool = False                 # one module per task (selected by task id) instead of one shared
    lr: float = Field(1e-3, gt=0)          # learning rate of the modules (the head keeps train.lr_head)


class ModularMethod(Method):
    """Subclasses implement ``add_modules(names)`` and ``activate(name)``."""

    Config = ModularConfig
    task_free = True                       # one shared module (one per task is refused online)

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        if cfg.per_task and ctx.stream.scenario not in TASK_ID_AT_TEST:
            raise UserError(f"method.per_task: one module per task needs the task id at test time "
                            f"(data.scenario: task_incremental or instruction), not {ctx.stream.scenario}")
        tasks = len(ctx.stream.tasks)
        self.module_names = [f"fl_task{t}" for t in range(tasks)] if cfg.per_task else ["fl_shared"]
        learner.backbone.requires_grad_(False)
        self.add_modules(self.module_names)
        self.select(self.module_names[0])

    def module_of(self, task) -> str:
        return self.module_names[task.index if self.cfg.per_task else 0]

    def select(self, name: str) -> None:
        """Make ``name`` the active module and the only trainable part of the backbone."""
        self.activate(name)
        for n, p in self.learner.backbone.named_parameters():
            p.requires_grad_(f".{name}." in n)

    def before_task(self, task):
        self.select(self.module_of(task))

    def eval_task(self, task):
        self.select(self.module_of(task))

    @property
    def per_task_encoder(self):
        return self.cfg.per_task

    def param_groups(self, train):
        modules = [p for p in self.learner.backbone.parameters() if p.requires_grad]
        own = [p for p in self.learner.own_parameters() if p.requires_grad]
        return [{"params": modules, "lr": self.cfg.lr}, {"params": own, "lr": train.lr_head}]

    def add_modules(self, names: list[str]) -> None:
        raise NotImplementedError

    def activate(self, name: str) -> None:
        raise NotImplementedError
