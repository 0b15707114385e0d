"""Copies of a model's trainable weights, and putting weights back: what weight-space methods
(averaging, merging) hold between tasks. Copies live on the CPU in the parameters' dtype."""
from __future__ import annotations

import torch

Weights = dict[str, torch.Tensor]


def snapshot(params: dict[str, torch.nn.Parameter], dtype: torch.dtype | None = None) -> Weights:
    """A detached CPU copy of each parameter (in ``dtype`` if given)."""
    return {n: p.detach().to("cpu", dtype, copy=True) for n, p in params.items()}


@torch.no_grad()
def assign(params: dict[str, torch.nn.Parameter], values: Weights) -> None:
    """Set each named parameter to the given value, in place (optimizers and peft keep their references)."""
    for n, v in values.items():
        params[n].copy_(v)


def interpolate(start: Weights, end: Weights, alpha: float) -> Weights:
    """(1 - alpha) start + alpha end, written so that alpha = 0 gives ``start`` and alpha = 1 gives
    ``end`` exactly (``torch.lerp``'s a + alpha (b - a) need not return b at alpha = 1)."""
    return {n: (1 - alpha) * start[n] + alpha * end[n] for n in end}
