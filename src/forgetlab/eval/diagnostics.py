"""Forgetting diagnostics as pure functions: did the model forget, or did its classifier drift?

- ``decomposition``: each old task's drop in observed accuracy, split into the drop of the probe
  (representation loss) and the rest (classifier drift).
- ``within_task_accuracy`` / ``error_share``: predictions restricted to a task's own classes, and
  where the errors of old tasks land.
- ``linear_cka`` (Kornblith et al., 2019) and ``trace_overlap`` of class covariances (Ramasesh et
  al.): how the representation itself moves.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def decomposition(R, P) -> list[dict]:
    """For each old task j < T-1: observed drop R[j,j] - R[T-1,j] = representation loss
    (P[j,j] - P[T-1,j]) + classifier drift (the rest)."""
    R, P = np.asarray(R, dtype=float), np.asarray(P, dtype=float)
    last = len(R) - 1
    out = []
    for j in range(last):
        observed = R[j, j] - R[last, j]
        representation = P[j, j] - P[last, j]
        out.append({"task": j, "observed_drop": float(observed), "representation_loss": float(representation),
                    "classifier_drift": float(observed - representation)})
    return out


def within_task_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> float:
    """Accuracy when the prediction may only choose among ``classes`` (the task's own)."""
    cols = torch.as_tensor(list(classes))
    pred = cols[logits[:, cols].argmax(-1)]
    return float((pred == labels).float().mean()) if len(labels) else 0.0


def error_share(pred: torch.Tensor, labels: torch.Tensor, classes: Sequence[int]) -> tuple[int, int]:
    """(errors predicted as one of ``classes``, all errors)."""
    wrong = pred != labels
    inside = torch.isin(pred, torch.as_tensor(list(classes)))
    return int((wrong & inside).sum()), int(wrong.sum())


def _centered(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return x - x.mean(0, keepdim=True)


def linear_cka(x, y) -> float:
    """Linear CKA between representations x [N, d1] and y [N, d2] of the same N inputs:
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F), 1 for identical, invariant to orthogonal maps
    and isotropic scaling."""
    x, y = _centered(x), _centered(y)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


def trace_overlap(a, b) -> float:
    """Overlap of two sets of representations: Tr(Σa Σb) / sqrt(Tr(Σa²) Tr(Σb²)) of their covariance
    matrices (1: the same subspace and spread; 0: orthogonal subspaces)."""
    sa, sb = (_centered(v).T @ _centered(v) / max(len(v) - 1, 1) for v in (a, b))
    return float(torch.trace(sa @ sb) / torch.sqrt(torch.trace(sa @ sa) * torch.trace(sb @ sb)))
