"""Layer freezing: the whole backbone (a linear probe trained in sequence) or its lowest k layers."""
from __future__ import annotations

from pydantic import Field

from ..errors import UserError
from .base import Method, MethodConfig


class FreezeConfig(MethodConfig):
    layers: int | None = Field(None, ge=0)   # None: the whole backbone; k: embeddings + lowest k layers


class Freeze(Method):
    name = "freeze"
    Config = FreezeConfig
    language_modeling = True

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        if cfg.layers is None and learner.scenario == "language_modeling":
            raise UserError("method.layers: a whole frozen backbone leaves a language model nothing to train "
                            "(its output layer is the backbone's); set how many layers to freeze")

    def before_task(self, task):
        if task.index == 0:
            self.learner.freeze_backbone(self.cfg.layers)
