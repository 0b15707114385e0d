"""STUB (replaced by the causal branch): the masked next-token NLL."""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll [B, L-1], mask [B, L-1]): position t's logits predict labels[:, t+1]; 0 where ignored."""
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                          reduction="none").view_as(targets)
    return nll, mask
