"""The blurry split of an online stream: each task's training examples in its own segment, but a share
m of them moved into the neighbouring tasks' segments, so task boundaries blur (the i-Blurry and
Si-Blurry setups of Koh et al., ICLR 2022, and Moon et al., ICCV 2023)."""
from __future__ import annotations

import numpy as np


def blurry_split(counts: list[int], share: float, seed: int) -> list[list[tuple[int, int]]]:
    """Per segment (one per task, in task order), its examples as ``(task_id, example_id)``, shuffled.

    Task t keeps all but round(share · counts[t]) of its examples (at most counts[t] − 1: every task keeps
    one in its own segment), drawn at random; each of those goes to
    segment t−1 or t+1 at random (the first and last task have one neighbour; a single task keeps all).
    Every example lands in exactly one segment; the same counts, share and seed give the same split."""
    rng = np.random.default_rng(seed)
    segments: list[list[tuple[int, int]]] = [[] for _ in counts]
    last = len(counts) - 1
    for t, n in enumerate(counts):
        moved = set(rng.choice(n, size=min(round(share * n), max(n - 1, 0)) if last else 0, replace=False).tolist())
        for e in range(n):
            if e not in moved:
                segments[t].append((t, e))
                continue
            neighbours = [s for s in (t - 1, t + 1) if 0 <= s <= last]
            segments[neighbours[int(rng.integers(len(neighbours)))]].append((t, e))
    return [[segment[i] for i in rng.permutation(len(segment))] for segment in segments]


def composition(segments: list[list[tuple[int, int]]], tasks: int) -> list[list[int]]:
    """Per segment, how many examples of each task it holds."""
    return [[sum(1 for t, _ in segment if t == task) for task in range(tasks)] for segment in segments]
