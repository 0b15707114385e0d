"""Per-class accuracy and forgetting as pure functions.

``A[i, c]`` is class c's accuracy over the test examples of class c in tasks 0..i, after training
through task i; None (NaN in numpy) where those tasks have no test example of class c, i.e. before
the class is seen.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def class_accuracy(pred: Sequence[int], labels: Sequence[int], num_classes: int) -> list[float | None]:
    """Each class's accuracy over the examples labelled with it; None for a class with no example."""
    pred, labels = np.asarray(pred, dtype=int), np.asarray(labels, dtype=int)
    total = np.bincount(labels, minlength=num_classes)
    correct = np.bincount(labels[pred == labels], minlength=num_classes)
    return [float(c / n) if n else None for c, n in zip(correct, total)]


def per_class_forgetting(A) -> list[float | None]:
    """For each class c: max_{i<T-1} A[i, c] − A[T-1, c], the drop from its best accuracy before the
    last evaluation to its final one; None for a class first seen in the last task (or never)."""
    A = np.asarray(A, dtype=float)          # None -> NaN
    if A.ndim != 2 or A.shape[0] == 0:
        raise ValueError(f"per-class accuracy must be a non-empty [evaluations x classes] matrix, got shape {A.shape}")
    out: list[float | None] = []
    for c in range(A.shape[1]):
        earlier = A[:-1, c][~np.isnan(A[:-1, c])]
        final = A[-1, c]
        out.append(float(earlier.max() - final) if len(earlier) and not np.isnan(final) else None)
    return out
