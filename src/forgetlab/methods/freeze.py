"""Layer freezing: the whole backbone (a linear probe trained in sequence) or its lowest k layers."""
from __future__ import annotations

from pydantic import Field

from ..errors import UserError
from .base import Method, MethodConfig


class FreezeConfig(MethodConfig):
    layers: int | None = Field(None, ge=0)   # None: the whole backbone; k: embeddings + lowest k layers


class Freeze(Method):
    name = "freeze"
    task_free = True
    Config = FreezeConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        if cfg.layers is None and not learner.own_parameters():
            raise UserError("method.layers: a whole frozen backbone leaves this learner nothing to train "
                            "(its output layer is the backbone's, as a language model's); set how many layers to freeze")

    def before_task(self, task):
        self.learner.freeze_backbone(self.cfg.layers)     # the same layers every time (online: whichever task comes first)
