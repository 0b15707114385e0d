"""Continual-learning metrics as pure functions of the accuracy matrix, or of a language-modelling
stream's perplexity or NLL matrix (formulas in docs/design.md).

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
    """The accuracy matrix's metrics, keyed as in results.json (``matrix_metrics`` of the primary
    matrix), with intransigence where the joint model's R*[j] are given."""
    return {**matrix_metrics(R, b, "acc", primary=True), "intransigence": intransigence(R, joint_reference)}


def matrix_metrics(M, b: Sequence[float] | None, key: str, direction: str = "higher",
                   primary: bool = False) -> dict[str, float | None]:
    """The metrics of a matrix (a kind's ``matrices``) keyed with ``key``: M[i, j] is task j's value after
    training through task i and b_j its value before any training.

    - ``{key}`` = (1/T) Σ_j M[T-1, j]
    - ``avg_incremental_{key}`` = (1/T) Σ_i (1/(i+1)) Σ_{j≤i} M[i, j]
    - ``learning_{key}`` = (1/T) Σ_j M[j, j]
    - ``bwt_{key}`` = 1/(T-1) Σ_{j<T-1} (M[T-1, j] − M[j, j])
    - ``fwt_{key}`` = 1/(T-1) Σ_{j≥1} (M[j-1, j] − b_j)
    - ``forgetting_{key}`` = 1/(T-1) Σ_{j<T-1} (best_{i<T-1} M[i, j] − M[T-1, j]) where higher is better,
      (M[T-1, j] − best_{i<T-1} M[i, j]) where lower is (best: the maximum, or the minimum)

    The primary matrix (accuracy) keeps the field's names: ``bwt``, ``fwt``, ``forgetting`` without the
    key, and ``intransigence`` (None here: it needs a joint run, the comparison report fills it).
    Where lower is better, a positive bwt or forgetting is forgetting.
    """
    M = _square(M)
    tag = "" if primary else f"_{key}"
    out = {key: average_accuracy(M), f"avg_incremental_{key}": average_incremental_accuracy(M),
           f"learning_{key}": learning_accuracy(M), f"bwt{tag}": backward_transfer(M),
           f"fwt{tag}": forward_transfer(M, b), f"forgetting{tag}": forgetting(M if direction == "higher" else -M)}
    if primary:
        out["intransigence"] = None
    return out


def anytime_auc(values: Sequence[float]) -> float:
    """A_auc (Koh et al., ICLR 2022): the area under the anytime curve, normalised by its length. With
    the curve evaluated every Δn steps, A_auc = Σ_k f(k·Δn)·Δn / (K·Δn) = (1/K) Σ_k f(k·Δn): the mean of its
    K values (an online run's last point may come sooner, at the stream's end; it counts as one point)."""
    if not len(values):
        raise ValueError("the anytime curve has no points")
    return float(np.mean(values))


LOWER_IS_BETTER = ("forgetting", "intransigence")


def metric_direction(key: str, matrix_direction: str = "higher") -> str:
    """"higher" or "lower": which way a metric of results.json is better. Every metric of a matrix where
    lower is better (perplexity, NLL) is better lower, and so are forgetting and intransigence."""
    return "lower" if matrix_direction == "lower" or key.startswith(LOWER_IS_BETTER) else "higher"
