"""Weight averaging: WiSE-FT, "Robust fine-tuning of zero-shot models" (Wortsman et al., CVPR 2022), as a
continual method; Lin et al., "Mitigating the Alignment Tax of RLHF" (EMNLP 2024) found interpolating
with the model before fine-tuning the best trade-off between what is learnt and what is lost.

After each task the weights become (1 - alpha) theta_anchor + alpha theta_trained, where theta_anchor is
the model before the task (``anchor: previous``) or before the stream (``original``), and the model is
evaluated so. The next task trains from that average (``carry: averaged``) or from the fine-tuned
weights (``carry: fine_tuned``: the stream is sequential fine-tuning, each evaluation its WiSE-FT).

Other coefficients need no retraining: after each task the stream's tasks and general ability are also
evaluated at every alpha of ``alphas`` (results.json ``variants``: a curve per task). With
``anchor: original, carry: fine_tuned`` every point of the curve is exactly what a run at that alpha
gives; otherwise a point shares this run's path up to the task before.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..errors import UserError
from .base import Method, MethodConfig
from .components.snapshots import assign, interpolate, snapshot


class AverageConfig(MethodConfig):
    alpha: float = Field(0.5, ge=0, le=1)              # weight of the fine-tuned model (1: plain fine-tuning)
    anchor: Literal["previous", "original"] = "previous"
    carry: Literal["averaged", "fine_tuned"] = "averaged"    # what the next task trains from
    alphas: list[float] = Field(default_factory=list)   # further alphas evaluated after each task


class Average(Method):
    name = "average"
    Config = AverageConfig
    variant_parameter = "alpha"

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        bad = [a for a in cfg.alphas if not 0 <= a <= 1 or a == cfg.alpha]
        if bad:
            raise UserError(f"method.alphas: further coefficients in [0, 1] other than method.alpha "
                            f"({cfg.alpha}), not {bad[0]}")
        self.original = self.anchor = self.trained = None

    @property
    def variant_value(self):
        return self.cfg.alpha

    def before_task(self, task):
        super().before_task(task)
        params = self.trainable()
        if self.cfg.carry == "fine_tuned" and self.trained is not None:
            assign(params, {n: w for n, w in self.trained.items() if n in params})
        if self.cfg.anchor == "previous":
            self.anchor = snapshot(params)
        else:       # a parameter first trained now (a new head block) joins the original as it is
            self.original = {**snapshot({n: p for n, p in params.items() if n not in (self.original or {})}),
                             **(self.original or {})}
            self.anchor = self.original

    def after_task(self, task):
        super().after_task(task)
        self.trained = snapshot({n: p for n, p in self.trainable().items() if n in self.anchor})
        assign(self.trainable(), interpolate(self.anchor, self.trained, self.cfg.alpha))

    def variants(self):
        params = self.trainable()
        for alpha in self.cfg.alphas:
            assign(params, interpolate(self.anchor, self.trained, alpha))
            yield alpha
        assign(params, interpolate(self.anchor, self.trained, self.cfg.alpha))

    def state(self):
        """What the next task needs: the original weights (``anchor: original``) and the fine-tuned ones
        (``carry: fine_tuned``); the previous task's anchor is taken afresh before each task."""
        kept = {"original": self.original, "trained": self.trained if self.cfg.carry == "fine_tuned" else None}
        return {**super().state(), **{f"{key}.{n}": t for key, weights in kept.items() if weights for n, t in weights.items()}}

    def held(self):
        kept = {"original": self.original, "anchor": self.anchor, "trained": self.trained}
        return {f"{key}.{n}": t for key, weights in kept.items() if weights for n, t in weights.items()}

    def load_state(self, state):
        super().load_state(state)
        for key in ("original", "trained"):
            prefix = f"{key}."
            setattr(self, key, {n[len(prefix):]: t for n, t in state.items() if n.startswith(prefix)} or None)
        self.anchor = self.original
