"""SEQ*: "Learn or Recall? Revisiting Incremental Learning with Pre-trained Language Models"
(Zheng et al., ACL 2024).

Sequential fine-tuning with four changes that remove classifier drift: warm up (train the
backbone) on the first task only, then freeze the backbone; freeze the classifier rows of old
classes; a cosine head; optionally pre-allocate the outputs of all classes. With ``warmup: false``
the backbone is never trained (the paper's FixBC+Cos variant).
"""
from __future__ import annotations

from .base import Method, MethodConfig


class SeqStarConfig(MethodConfig):
    warmup: bool = True          # train the backbone on the first task before freezing it
    cosine: bool = True
    preallocate: bool = False


class SeqStar(Method):
    name = "seq_star"
    kinds = frozenset({"classification"})
    Config = SeqStarConfig

    @classmethod
    def head_config(cls, cfg, head):
        kind = "cosine" if cfg.cosine else head.type
        return head.model_copy(update={"type": kind, "preallocate": cfg.preallocate or head.preallocate})

    def before_task(self, task):
        if task.index > 0 or not self.cfg.warmup:
            self.learner.freeze_backbone()
        self.learner.freeze_head_blocks_before(task.index)
