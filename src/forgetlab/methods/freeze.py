"""Layer freezing: the whole backbone (a linear probe trained in sequence) or its lowest k layers."""
from __future__ import annotations

from pydantic import Field

from .base import Method, MethodConfig


class FreezeConfig(MethodConfig):
    layers: int | None = Field(None, ge=0)   # None: the whole backbone; k: embeddings + lowest k layers


class Freeze(Method):
    name = "freeze"
    Config = FreezeConfig

    def before_task(self, task):
        if task.index == 0:
            self.learner.freeze_backbone(self.cfg.layers)
