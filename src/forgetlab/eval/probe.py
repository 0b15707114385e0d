"""Probes on frozen features: how much of each class the representation still separates.

``fit_probe`` trains a probe on features and labels; ``Probe.scores`` gives class scores. Kinds:
``linear`` (a linear map without bias, Adam, as in "Can BERT refrain from forgetting on sequential
tasks?", ICLR 2023), ``cosine`` (scale · cos(w_c, x), trained the same way) and ``prototype``
(cosine to each class's mean feature, no training).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

COSINE_SCALE = 16.0


@dataclass
class Probe:
    kind: str
    weight: torch.Tensor           # [C, dim]: one row per class id (rows of classes never seen stay 0)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "linear":
            return x @ self.weight.T
        return COSINE_SCALE * F.normalize(x, dim=-1) @ F.normalize(self.weight, dim=-1).T


def fit_probe(x: torch.Tensor, y: torch.Tensor, num_classes: int, kind: str = "linear", epochs: int = 20,
              lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> Probe:
    """Fit a probe on features ``x`` [N, dim] and class ids ``y`` [N] (deterministic for a seed)."""
    with torch.inference_mode(False), torch.enable_grad():       # callers may be in inference mode
        return _fit(x.float().clone(), y.long().clone(), num_classes, kind, epochs, lr, batch_size, seed)


def _fit(x, y, num_classes, kind, epochs, lr, batch_size, seed) -> Probe:
    if kind == "prototype":
        sums = torch.zeros(num_classes, x.shape[1]).index_add_(0, y, F.normalize(x, dim=-1))
        return Probe(kind, sums)                  # the direction of the sum is the mean's direction
    if kind not in ("linear", "cosine"):
        raise ValueError(f"unknown probe kind {kind!r}")
    g = torch.Generator().manual_seed(seed)
    weight = (torch.randn(num_classes, x.shape[1], generator=g) * 0.01).requires_grad_(True)
    probe = Probe(kind, weight)
    opt = torch.optim.Adam([weight], lr=lr)
    seen = torch.zeros(num_classes, dtype=torch.bool)
    seen[y.unique()] = True
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            logits = probe.scores(x[idx]).masked_fill(~seen, float("-inf"))
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Probe(kind, weight.detach() * seen[:, None])
