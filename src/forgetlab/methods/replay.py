"""Experience replay: "On Tiny Episodic Memories in Continual Learning" (Chaudhry et al., 2019).

A fixed-size memory (reservoir or class-balanced) of past examples; every training batch is
joined by a batch drawn from the memory and the model takes one step on the union. The memory
lives in the base class, so any method composes with it; this is sequential fine-tuning plus it.

On a causal LM's streams (instruction, language modelling) general-domain text can be replayed too,
as pretraining data is mixed into fine-tuning to keep general ability: at ``general_ratio`` r, each
step draws ceil(r × batch size) windows of the text and adds r times their mean next-token loss.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field

from ..errors import UserError
from ..models.learner import Classifier
from ..train.batching import Inputs
from .base import Method, MethodConfig
from .components.memory import ReplayConfig


class ReplayMethodConfig(MethodConfig):
    replay: ReplayConfig = ReplayConfig()
    general: str | None = None                       # general text replayed too: wikitext2 or a text file
    general_ratio: float = Field(0.25, gt=0, le=4)   # windows per training example, and their loss weight
    general_tokens: int = Field(65536, ge=2)         # of the text, cut into backbone.max_length windows


class Replay(Method):
    name = "replay"
    sharded = True
    task_free = True
    Config = ReplayMethodConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.general = self._general_windows() if cfg.general else None

    def loss(self, batch, out):
        loss = super().loss(batch, out)
        if self.general is None:
            return loss
        n = math.ceil(self.cfg.general_ratio * len(batch["labels"]))
        pick = torch.randint(len(self.general), (n,)).tolist()
        windows = [self.general[i] for i in pick]
        general = self.ctx.batch(Inputs(torch.zeros(n, dtype=torch.long), torch.full((n,), -1), torch.tensor(pick),
                                        tokens=windows, targets=windows))
        text = self.learner(general)
        return loss + self.cfg.general_ratio * torch.nn.functional.cross_entropy(text.logits.flatten(0, -2),
                                                                                 text.targets.flatten(), ignore_index=-100)

    def _general_windows(self) -> list[list[int]]:
        from ..eval.retention import corpus_texts

        backbone = self.learner.backbone
        if isinstance(self.learner, Classifier) or not backbone.causal:
            raise UserError("method.general: general text is replayed with the next-token loss; it needs a causal "
                            "LM on an instruction or language_modeling stream")
        text = "\n".join(corpus_texts(self.cfg.general, self.cfg.general_tokens * 20, key="method.general"))
        prefix = len(backbone.tokenize([""])[0])
        ids = backbone.tokenize([text], max_length=self.cfg.general_tokens + prefix)[0][prefix:]
        size = backbone.max_length
        return [w for w in (ids[i: i + size] for i in range(0, len(ids), size)) if len(w) > 1]
