"""Data transforms over one task's training examples: sparsity, few-shot, a long tail, redundancy.

``transform(rows, cfg, task)`` applies, in this order:

1. ``shots``: exactly k examples per class (all of a class with fewer), or ``keep``: that share of
   each class's examples, rounded half up, at least 1;
2. ``zipf``: the task's classes in a seeded rank order; the class of rank r (0-based) keeps
   m·(r+1)^-zipf examples, rounded half up, at least 1, where m is the size of the task's smallest
   class (after step 1), so the sizes follow Zipf's law wherever rounding allows;
3. ``redundancy``: round(f·n) of the task's n examples, a seeded choice, are appended again as
   exact copies (n + round(f·n) examples in all).

Kept examples stay in their original order. Every choice comes from ``data.transform.seed`` and the
task's index, so one task's examples do not depend on another's. The stream applies this to training
sets only, after ``data.max_train_per_class``; test sets are never transformed.
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable

from pydantic import Field, model_validator

from ..config import Section
from .sources import Example


class TransformConfig(Section):
    """``data.transform``: changes to each task's training examples (above); test sets stay as they are."""
    keep: float = Field(1.0, gt=0, le=1)         # sparsity: this share of each class's examples, at least 1
    shots: int | None = Field(None, ge=1)        # few-shot: k examples per class (all if fewer)
    zipf: float | None = Field(None, ge=0)       # long tail: rank r keeps m·(r+1)^-zipf, m the smallest class
    redundancy: float = Field(0.0, ge=0, lt=1)   # add exact copies of this share of the task's examples
    seed: int = 0                                # which examples are kept or copied, and the classes' ranks

    @model_validator(mode="after")
    def _one_subsample(self):
        if self.shots is not None and self.keep < 1:
            raise ValueError("set at most one of data.transform.keep or data.transform.shots")
        return self


def round_half_up(x: float) -> int:
    """2.5 -> 3 (Python's ``round`` would give 2)."""
    return math.floor(x + 0.5)


def class_sizes(rows: list[Example]) -> dict[str, int]:
    """Examples per label."""
    sizes: dict[str, int] = {}
    for ex in rows:
        sizes[ex.label] = sizes.get(ex.label, 0) + 1
    return sizes


def sample_per_class(rows: list[Example], sizes: dict[str, int], rng: random.Random) -> list[Example]:
    """``sizes[label]`` examples of each class (all of a class with fewer): a seeded sample, kept in order."""
    by_label: dict[str, list[int]] = {}
    for i, ex in enumerate(rows):
        by_label.setdefault(ex.label, []).append(i)
    keep: set[int] = set()
    for label in sorted(by_label):
        idx, k = by_label[label], sizes[label]
        keep.update(idx if len(idx) <= k else rng.sample(idx, k))
    return [ex for i, ex in enumerate(rows) if i in keep]


def subsample(rows: list[Example], keep: float, shots: int | None, rng: random.Random) -> list[Example]:
    """Few-shot (``shots`` per class) or sparsity (a ``keep`` share of each class, at least 1)."""
    sizes = {label: shots if shots is not None else max(1, round_half_up(keep * n))
             for label, n in class_sizes(rows).items()}
    return sample_per_class(rows, sizes, rng)


def zipf_ranks(labels: Iterable[str], seed: int) -> list[str]:
    """The labels in a seeded random order, most frequent first. A label's place depends only on the
    seed and the label, so in domain-incremental streams a class has one rank in every task."""
    return sorted(labels, key=lambda label: (random.Random(f"{seed}:{label}").random(), label))


def zipf_sizes(sizes: dict[str, int], exponent: float, seed: int) -> dict[str, int]:
    """Each class's size under the long tail: m·(r+1)^-exponent, rounded half up, at least 1."""
    m = min(sizes.values())
    return {label: max(1, round_half_up(m * (r + 1) ** -exponent))
            for r, label in enumerate(zipf_ranks(sizes, seed))}


def long_tail(rows: list[Example], exponent: float, seed: int, rng: random.Random) -> list[Example]:
    """Cut each class to its Zipf size (``zipf_sizes``)."""
    return sample_per_class(rows, zipf_sizes(class_sizes(rows), exponent, seed), rng)


def duplicate(rows: list[Example], fraction: float, rng: random.Random) -> list[Example]:
    """The rows, then exact copies of round(fraction·n) of them (a seeded choice, in order)."""
    picked = sorted(rng.sample(range(len(rows)), round_half_up(fraction * len(rows))))
    return rows + [rows[i] for i in picked]


def transform(rows: list[Example], cfg: TransformConfig, task: int) -> list[Example]:
    """Task ``task``'s training examples after subsampling, the long tail and redundancy, in that order."""
    rng = random.Random(cfg.seed * 1_000_003 + task)
    rows = subsample(rows, cfg.keep, cfg.shots, rng)
    if cfg.zipf is not None:
        rows = long_tail(rows, cfg.zipf, cfg.seed, rng)
    return duplicate(rows, cfg.redundancy, rng)
