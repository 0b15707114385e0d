"""I-LoRA: "Analyzing and Reducing Catastrophic Forgetting in Parameter Efficient Tuning" (Ren et al.,
2024, arXiv 2402.18865): a fast LoRA and a slow LoRA that is its running average.

The fast LoRA trains on the task with a replay memory (the base class's, 500 examples as in the
released code's buffer); after every optimizer step the slow LoRA follows it,
slow <- lam * slow + (1 - lam) * fast (both start equal). On replayed examples a consistency loss pulls
the fast LoRA's outputs up to the slow one's: mean((f - max(f, s))^2), f and s the two LoRAs' outputs (classes ruled out left aside),
the target taking the fast output where it is the larger, as the released code does. Testing uses the
slow LoRA. Two simplifications: the consistency is on the learner's logits, not on every layer's hidden
states (the learner interface exposes only its output), and the memory batch joins the task batch in
one cross-entropy instead of the code's mean of the two losses. lam: implementations
differ (the released code min(1 - 1/(step+1), 0.25), a warm-up capped at 0.25; EasyCL's port 0.999);
0.99 here, a slow learner of about a hundred steps' memory.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from ..models.causal_lm import IGNORE_INDEX
from .base import joint_cross_entropy
from .components.memory import ReplayConfig
from .inc_lora import IncLoRA, IncLoRAConfig

FAST, SLOW = "fl_fast", "fl_slow"


class EMALoRAConfig(IncLoRAConfig):
    replay: ReplayConfig = ReplayConfig(size=500)   # the released code's buffer
    lam: float = Field(0.99, ge=0, le=1)            # slow <- lam * slow + (1 - lam) * fast
    consistency: float = Field(1.0, ge=0)           # weight of the consistency loss (the code's reg_weight)


class EMALoRA(IncLoRA):
    name = "ema_lora"
    Config = EMALoRAConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        with torch.no_grad():
            for fast, slow in self.pairs():
                slow.copy_(fast)
        self.use([FAST], FAST)

    def names(self, tasks):
        return [FAST, SLOW]

    def pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(fast, slow) weight pairs of every adapted layer's A and B."""
        return [(getattr(layer, part)[FAST].weight, getattr(layer, part)[SLOW].weight)
                for layer in self.lora_layers() for part in ("lora_A", "lora_B")]

    def before_task(self, task):
        self.use([FAST], FAST)

    def loss(self, batch, out):
        outs, memory = self.with_memory(out)
        loss = joint_cross_entropy(outs) + self.penalty(batch, out)
        if memory is None or self.cfg.consistency == 0:
            return loss
        with torch.no_grad():                   # the slow learner's outputs, without dropout
            self.use([SLOW], None)
            self.learner.eval()
            slow = self.learner(memory).logits
            self.learner.train()
            self.use([FAST], FAST)
        scored = outs[1].targets != IGNORE_INDEX                # rows with a target (not prompt or padding)
        fast, slow = outs[1].logits[scored], slow[scored]
        kept = slow.isfinite()                                  # classes ruled out (-inf) compare nothing
        return loss + self.cfg.consistency * F.mse_loss(fast[kept], torch.maximum(fast, slow)[kept].detach())

    def after_step(self):
        with torch.no_grad():
            for fast, slow in self.pairs():
                slow.mul_(self.cfg.lam).add_(fast, alpha=1 - self.cfg.lam)

    def after_task(self, task):
        """Test with the slow LoRA. It stays marked trainable (no optimizer holds it, nothing steps it) so
        that the kinds, which cache features under a backbone without trainable weights, encode afresh."""
        super().after_task(task)
        self.use([SLOW], SLOW)
