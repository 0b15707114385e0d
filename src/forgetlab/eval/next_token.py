"""A language model's next-token scores on held-out token windows: mean NLL and top-1 accuracy."""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..models.lm_learner import LMLearner


@torch.inference_mode()
def next_token_scores(learner: LMLearner, batches: Iterable[dict]) -> tuple[float, float]:
    """(mean NLL in nats, top-1 accuracy) over every predicted token of the batches' windows, each
    token weighing the same; the perplexity is exp(mean NLL)."""
    learner.eval()
    nll, right, count = 0.0, 0, 0
    for batch in batches:
        out = learner(batch)
        nll += F.cross_entropy(out.logits.float(), out.targets, reduction="sum").item()
        right += int((out.logits.argmax(-1) == out.targets).sum())
        count += len(out.targets)
    return nll / count, right / count
