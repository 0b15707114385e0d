"""Merging task vectors: the mean, task arithmetic (Ilharco et al., ICLR 2023) and TIES (Yadav et al., NeurIPS 2023).

A task vector maps parameter names to tensors; a name a vector lacks counts as zeros there. Each
function returns the merged vector, one tensor per name found in any of the vectors.

Not mergekit: its unit of work is checkpoints on disk merged by a YAML recipe, with lazy loading,
while here the vectors are in memory after every task; it would pin transformers>=5, accelerate,
peft>=0.18, datasets, scipy, click and more (LGPL-3.0) for the ~30 lines below.
"""
from __future__ import annotations

import torch

Vector = dict[str, torch.Tensor]


def mean(vectors: list[Vector]) -> Vector:
    """The average of the task vectors: (1/T) sum_t tau_t."""
    return {n: torch.stack(ts).mean(0) for n, ts in _by_name(vectors).items()}


def task_arithmetic(vectors: list[Vector], scale: float) -> Vector:
    """Task arithmetic: scale * sum_t tau_t."""
    return {n: torch.stack(ts).sum(0) * scale for n, ts in _by_name(vectors).items()}


def ties(vectors: list[Vector], density: float, scale: float) -> Vector:
    """TIES: trim each tau_t to its top ``density`` magnitudes (per tensor), elect each coordinate's sign
    as the sign of the trimmed values' sum, and average the trimmed values that have that sign (zeros
    and values of the other sign are left out; no such value, or an elected sign of 0, gives 0); times scale."""
    merged = {}
    for n, ts in _by_name(vectors).items():
        trimmed = torch.stack([trim(t, density) for t in ts])
        agree = trimmed * trimmed.sum(0).sign() > 0
        merged[n] = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1) * scale
    return merged


def trim(tensor: torch.Tensor, density: float) -> torch.Tensor:
    """The tensor with all but its k = max(1, round(density * numel)) largest magnitudes set to zero."""
    k = max(1, round(density * tensor.numel()))
    if k >= tensor.numel():
        return tensor.clone()
    flat = tensor.flatten()
    kept = torch.zeros_like(flat)
    top = flat.abs().topk(k).indices
    kept[top] = flat[top]
    return kept.view_as(tensor)


def _by_name(vectors: list[Vector]) -> dict[str, list[torch.Tensor]]:
    """Each name's tensors, one per vector (zeros where a vector lacks the name)."""
    shapes = {n: t for v in vectors for n, t in v.items()}
    return {n: [v.get(n, torch.zeros_like(like)) for v in vectors] for n, like in shapes.items()}
