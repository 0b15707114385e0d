"""The learner of a language-modelling stream: a causal LM and its next-token predictions."""
from __future__ import annotations

from torch import nn

from ..data.stream import Stream, Task
from .backbones import Backbone
from .learner import Learner, Output


class LMLearner(Learner):
    """A causal LM trained with the next-token loss on token windows. It has no classifier: ``head``
    is an empty module, so what methods do with the head (train it, save it) is a no-op."""

    def __init__(self, backbone: Backbone, stream: Stream):
        nn.Module.__init__(self)          # none of Learner's classifier set-up applies
        self.backbone = backbone
        self.scenario = stream.scenario
        self.head = nn.Module()
        self.tasks_seen = 0

    def begin_task(self, task: Task) -> None:
        self.tasks_seen = max(self.tasks_seen, task.index + 1)

    def forward(self, batch: dict) -> Output:
        """Logits [N, vocab] and targets [N] of every predicted token of the batch's windows: each
        window's tokens 2..n, padding left out."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = self.backbone.lm_logits(ids, mask)[:, :-1]
        predicted = mask[:, 1:].bool()
        return Output(logits[predicted], None, ids[:, 1:][predicted])
