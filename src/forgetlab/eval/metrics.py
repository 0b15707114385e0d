"""Continual-learning metrics as pure functions of the accuracy matrix, or of a language-modelling
stream's perplexity or NLL matrix (formulas in DESIGN.md).

``R[i, j]`` is the accuracy on task j after training through task i. Metrics that need two
tasks return ``None`` when T = 1, never NaN.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _square(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {R.shape}")
    return R


def average_accuracy(R) -> float:
    """acc = (1/T) Σ_j R[T-1, j]."""
    R = _square(R)
    return float(R[-1].mean())


def average_incremental_accuracy(R) -> float:
    """(1/T) Σ_i (1/(i+1)) Σ_{j≤i} R[i, j]."""
    R = _square(R)
    return float(np.mean([R[i, : i + 1].mean() for i in range(len(R))]))


def learning_accuracy(R) -> float:
    """(1/T) Σ_j R[j, j]: how well each task is learnt when it is learnt."""
    return float(np.diag(_square(R)).mean())


def backward_transfer(R) -> float | None:
    """bwt = 1/(T-1) Σ_{j<T-1} (R[T-1, j] − R[j, j])."""
    R = _square(R)
    T = len(R)
    if T < 2:
        return None
    return float(np.mean(R[-1, :-1] - np.diag(R)[:-1]))


def forward_transfer(R, b: Sequence[float] | None) -> float | None:
    """fwt = 1/(T-1) Σ_{j≥1} (R[j-1, j] − b_j); b_j is task j's accuracy before any training."""
    R = _square(R)
    T = len(R)
    if T < 2 or b is None:
        return None
    b = np.asarray(b, dtype=float)
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def forgetting(R) -> float | None:
    """1/(T-1) Σ_{j<T-1} (max_{i<T-1} R[i, j] − R[T-1, j])."""
    R = _square(R)
    T = len(R)
    if T < 2:
        return None
    return float(np.mean([R[: T - 1, j].max() - R[T - 1, j] for j in range(T - 1)]))


def intransigence(R, joint_reference: Sequence[float] | None) -> float | None:
    """(1/T) Σ_j (R*[j] − R[j, j]); R*[j] is the joint model's accuracy on task j after tasks 0..j."""
    if joint_reference is None:
        return None
    R = _square(R)
    ref = np.asarray(joint_reference, dtype=float)
    return float(np.mean(ref - np.diag(R)))


def all_metrics(R, b=None, joint_reference=None) -> dict[str, float | None]:
    """Every metric of DESIGN.md, keyed as in results.json."""
    return {
        "acc": average_accuracy(R),
        "avg_incremental_acc": average_incremental_accuracy(R),
        "bwt": backward_transfer(R),
        "fwt": forward_transfer(R, b),
        "forgetting": forgetting(R),
        "intransigence": intransigence(R, joint_reference),
        "learning_acc": learning_accuracy(R),
    }


def lower_is_better_metrics(M, b: Sequence[float] | None, name: str) -> dict[str, float | None]:
    """The metrics of a matrix where lower is better — perplexity (``name="ppl"``) or mean next-token
    NLL (``"nll"``, the log of perplexity) — keyed with ``name``; M[i, j] is task j's value after
    training through task i and b_j its value before any training:

    - ``{name}`` = (1/T) Σ_j M[T-1, j]
    - ``avg_incremental_{name}`` = (1/T) Σ_i (1/(i+1)) Σ_{j≤i} M[i, j]
    - ``learning_{name}`` = (1/T) Σ_j M[j, j]
    - ``bwt_{name}`` = 1/(T-1) Σ_{j<T-1} (M[T-1, j] − M[j, j]); positive: forgetting
    - ``fwt_{name}`` = 1/(T-1) Σ_{j≥1} (M[j-1, j] − b_j); negative: earlier tasks helped
    - ``forgetting_{name}`` = 1/(T-1) Σ_{j<T-1} (M[T-1, j] − min_{i<T-1} M[i, j])

    They are the accuracy formulas with the sign of forgetting turned (its best earlier value is a minimum).
    """
    M = _square(M)
    return {
        name: average_accuracy(M),
        f"avg_incremental_{name}": average_incremental_accuracy(M),
        f"learning_{name}": learning_accuracy(M),
        f"bwt_{name}": backward_transfer(M),
        f"fwt_{name}": forward_transfer(M, b),
        f"forgetting_{name}": forgetting(-M),       # max_i (−M[i, j]) − (−M[T-1, j])
    }


LOWER_IS_BETTER = ("forgetting", "intransigence")


def metric_direction(key: str) -> str:
    """"higher" or "lower": which way a metric of results.json is better (perplexity and NLL metrics: lower)."""
    lower = key in LOWER_IS_BETTER or key.endswith(("ppl", "nll"))
    return "lower" if lower else "higher"
