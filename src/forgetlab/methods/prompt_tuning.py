"""Prompt tuning: "The Power of Scale for Parameter-Efficient Prompt Tuning" (Lester et al., EMNLP 2021),
via peft.

A few trainable virtual-token embeddings are prepended to every input; the model is frozen.
The virtual tokens are dropped again before pooling (and get no next-token logits). Inputs are
truncated so that prompt and text fit the model's positions; generation and likelihood scoring put the
virtual tokens into the KV cache once (``eval/generation.py``).
"""
from __future__ import annotations

from pydantic import Field

from ..errors import UserError
from ..models.peft import max_positions, wrap_with_peft
from .components.modular import ModularConfig, ModularMethod


class PromptTuningConfig(ModularConfig):
    num_virtual_tokens: int = Field(20, ge=1)
    lr: float = Field(1e-2, gt=0)


class PromptTuning(ModularMethod):
    name = "prompt_tuning"
    kinds = frozenset({"classification", "language_modeling", "instruction"})
    Config = PromptTuningConfig

    def add_modules(self, names):
        from peft import PromptTuningConfig as PeftPromptConfig

        if self.ctx.train.packing:
            raise UserError("train.packing: prompt tuning prepends its virtual tokens to each row, not to each "
                            "packed example; set it to false")
        backbone, n = self.learner.backbone, self.cfg.num_virtual_tokens
        limit = max_positions(backbone.model)
        if limit is not None and backbone.max_length + n > limit:
            backbone.max_length = limit - n
            formatter = getattr(self.ctx.kind, "formatter", None)      # an instruction stream's, made before
            if formatter is not None:
                formatter.max_length = backbone.max_length
        wrap_with_peft(backbone, names, lambda: PeftPromptConfig(task_type="FEATURE_EXTRACTION",
                                                                 num_virtual_tokens=n))

    def activate(self, name):
        self.learner.backbone.model.set_adapter(name)
