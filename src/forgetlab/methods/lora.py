"""LoRA: "Low-Rank Adaptation of Large Language Models" (Hu et al., ICLR 2022), via peft.

Low-rank updates B A (rank r, scaled by alpha / r) beside the chosen weight matrices (peft's
default targets for the model family, e.g. query and value); B starts at zero.
"""
from __future__ import annotations

from pydantic import Field

from ..models.peft import wrap_with_peft
from .components.modular import ModularConfig, ModularMethod


class LoRAConfig(ModularConfig):
    r: int = Field(8, ge=1)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None    # None: peft's default for the model family
    lr: float = Field(5e-4, gt=0)


class LoRA(ModularMethod):
    name = "lora"
    Config = LoRAConfig

    def add_modules(self, names):
        from peft import LoraConfig

        cfg = self.cfg
        wrap_with_peft(self.learner.backbone, names, lambda: LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules))

    def activate(self, name):
        self.learner.backbone.model.set_adapter(name)
