"""Incremental LoRA: a new LoRA per task, all of them summed at test time (the baseline of O-LoRA:
Wang et al., "Orthogonal Subspace Learning for Language Model Continual Learning", EMNLP 2023 Findings).

One peft LoRA adapter per task (``fl_task{t}``, all made up front so a checkpoint always finds them).
While task t trains, adapters 0..t are active (their updates summed) and only adapter t trains; the
earlier ones stay frozen and the base weights never change. Testing keeps 0..t active, so no task id
is needed: it works on every scenario and kind a peft LoRA works on. Defaults are those of O-LoRA's
released code (r 8, alpha 32, dropout 0.1, learning rate 1e-3).
"""
from __future__ import annotations

from pydantic import Field
from torch import nn

from ..models.peft import wrap_with_peft
from .base import Method, MethodConfig


class IncLoRAConfig(MethodConfig):
    r: int = Field(8, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | None = None    # None: peft's default for the model family
    lr: float = Field(1e-3, gt=0)              # learning rate of the LoRAs (the head keeps train.lr_head)


class IncLoRA(Method):
    name = "inc_lora"
    Config = IncLoRAConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        from peft import LoraConfig

        self.adapter_names = self.names(len(ctx.stream.tasks))
        learner.backbone.requires_grad_(False)
        wrap_with_peft(learner.backbone, self.adapter_names, lambda: LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=cfg.target_modules))
        self.use(self.adapter_names[:1], self.adapter_names[0])

    def names(self, tasks: int) -> list[str]:
        """The peft adapters to make: one per task."""
        return [f"fl_task{t}" for t in range(tasks)]

    def use(self, active: list[str], trainable: str | None) -> None:
        """Sum the adapters ``active`` in the forward pass; only ``trainable`` (if any) gets gradients."""
        self.learner.backbone.model.base_model.set_adapter(active)
        for n, p in self.learner.backbone.named_parameters():
            p.requires_grad_(trainable is not None and f".{trainable}." in n)

    def before_task(self, task):
        self.use(self.adapter_names[: task.index + 1], self.adapter_names[task.index])

    def param_groups(self, train):
        loras = [p for p in self.learner.backbone.parameters() if p.requires_grad]
        own = [p for p in self.learner.own_parameters() if p.requires_grad]
        return [{"params": loras, "lr": self.cfg.lr}, {"params": own, "lr": train.lr_head}]

    def lora_layers(self) -> list[nn.Module]:
        """The backbone's LoRA-adapted layers (each holds ``lora_A``/``lora_B`` per adapter)."""
        from peft.tuners.lora import LoraLayer

        return [m for m in self.learner.backbone.model.modules() if isinstance(m, LoraLayer)]
