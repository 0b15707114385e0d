"""Overlap between low-rank subspaces (O-LoRA's orthogonality loss), as pure functions."""
from __future__ import annotations

import torch


def orthogonality(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """sum_{i,j} |old new^T|_{ij}: the absolute inner products of every row of ``old`` [k, d] (earlier
    tasks' LoRA down-projections A, stacked) with every row of ``new`` [r, d]; zero when the row spaces
    are orthogonal. The absolute value (not a square) is O-LoRA's released code's choice."""
    return (old @ new.T).abs().sum()
