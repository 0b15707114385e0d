"""The method interface: hooks the engine calls around its one training loop.

Subclasses set ``name`` (the config name; setting it registers the class), optionally a
``Config`` with their own keys, and override only the hooks they change.
"""
from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..config import HeadConfig, Section
from ..data.stream import Task
from ..models.learner import Learner, Output

REGISTRY: dict[str, type["Method"]] = {}


class MethodConfig(Section):
    name: str


class Method:
    """Sequential training with cross-entropy: the base every method builds on."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    def __init__(self, cfg: MethodConfig, learner: Learner):
        self.cfg, self.learner = cfg, learner

    @classmethod
    def head_config(cls, cfg: MethodConfig, head: HeadConfig) -> HeadConfig:
        """The head this method needs (e.g. SEQ* asks for a cosine head)."""
        return head

    def before_task(self, task: Task) -> None:
        """Called after the task's classes are activated, before training on it."""

    def training_tasks(self, task: Task, seen: list[Task]) -> list[Task]:
        """The tasks whose training data this task trains on (``seen`` includes ``task``)."""
        return [task]

    def loss(self, batch: dict, out: Output) -> torch.Tensor:
        return F.cross_entropy(out.logits, batch["labels"])

    def after_backward(self) -> None:
        """Called between ``backward`` and the optimizer step (e.g. to mask gradients)."""

    def after_task(self, task: Task) -> None:
        """Called after training on the task, before it is evaluated."""

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors resume must restore (saved as safetensors)."""
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""
