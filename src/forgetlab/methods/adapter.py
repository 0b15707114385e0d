"""Adapters: "Parameter-Efficient Transfer Learning for NLP" (Houlsby et al., ICML 2019).

Bottleneck modules (down-projection, GELU, zero-initialised up-projection, residual) after each
layer's attention and feed-forward output projections. peft has no bottleneck adapter, so they
live in ``models/adapters.py``; the rest (shared or per-task, frozen base) is as for LoRA.
"""
from __future__ import annotations

from pydantic import Field

from ..models.adapters import add_adapters, set_active_adapter
from .components.modular import ModularConfig, ModularMethod


class AdapterConfig(ModularConfig):
    size: int = Field(64, ge=1)                # bottleneck width
    target_modules: list[str] | None = None    # None: the attention and feed-forward output projections


class Adapter(ModularMethod):
    name = "adapter"
    kinds = frozenset({"classification", "language_modeling"})
    Config = AdapterConfig

    def add_modules(self, names):
        add_adapters(self.learner.backbone.model, names, self.cfg.size, self.cfg.target_modules)

    def activate(self, name):
        set_active_adapter(self.learner.backbone.model, name)
