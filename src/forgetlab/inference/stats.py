"""The dataset-inference test (Maini et al. 2024): split, normalise, aggregate, one-sided Welch t-test.

Each side (suspect texts, known non-member reference texts) is split in two. The clipping bounds,
the standardisation and a linear aggregator (L2-regularised logistic regression, suspect = 1) are
fitted on the first halves only; the second halves' aggregated scores are compared by a one-sided
Welch t-test (H1: suspect scores are higher). Repeated splits are combined as min(1, 2 · median p),
which stays valid when the splits are dependent (Meinshausen, Meier and Bühlmann 2009).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


def welch_t_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(t, Welch–Satterthwaite degrees of freedom, one-sided p for mean(a) > mean(b))."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return float(t), float(df), float(stats.t.sf(t, df))


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted one half (the Mann–Whitney U over n·m)."""
    ranks = stats.rankdata(np.concatenate([positive, negative]))
    u = ranks[: len(positive)].sum() - len(positive) * (len(positive) + 1) / 2
    return float(u / (len(positive) * len(negative)))


def cohens_d(a: np.ndarray, b: np.ndarray) -> float:
    """Mean difference over the root mean of the two variances."""
    return float((a.mean() - b.mean()) / np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))


class Normaliser:
    """Clip each feature to its [q, 1 − q] quantiles, then standardise; fitted on training rows only."""

    def __init__(self, quantile: float = 0.01):
        self.quantile = quantile

    def fit(self, X: np.ndarray) -> "Normaliser":
        self.low, self.high = np.quantile(X, [self.quantile, 1 - self.quantile], axis=0)
        clipped = np.clip(X, self.low, self.high)
        self.mean, self.std = clipped.mean(0), clipped.std(0)
        self.std[self.std == 0] = 1.0
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.clip(X, self.low, self.high) - self.mean) / self.std


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 100) -> np.ndarray:
    """Weights [bias, w...] of L2-regularised logistic regression by Newton's method (bias not penalised)."""
    A = np.hstack([np.ones((len(X), 1)), X])
    w = np.zeros(A.shape[1])
    penalty = np.full(A.shape[1], l2)
    penalty[0] = 0.0
    for _ in range(iterations):
        p = 1 / (1 + np.exp(-A @ w))
        grad = A.T @ (p - y) + penalty * w
        hess = (A * (p * (1 - p))[:, None]).T @ A + np.diag(penalty) + 1e-9 * np.eye(A.shape[1])
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


@dataclass
class SplitTest:
    """One split: the test on the second halves, and what was fitted on the first."""
    p_value: float
    t: float
    df: float
    effect_size: float
    weights: np.ndarray
    suspect_scores: np.ndarray
    reference_scores: np.ndarray


def split_halves(n: int, seed: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(fitting indices, testing indices) of one side's ``n`` rows: a seeded shuffle, cut in half."""
    order = np.random.default_rng([seed, side]).permutation(n)
    return order[: n // 2], order[n // 2:]


def split_test(suspect: np.ndarray, reference: np.ndarray, seed: int, l2: float = 1.0) -> SplitTest:
    """Fit the normaliser and aggregator on the first halves, test the second halves."""
    (s_fit, s_test), (r_fit, r_test) = split_halves(len(suspect), seed, 0), split_halves(len(reference), seed, 1)
    s_fit, s_test, r_fit, r_test = suspect[s_fit], suspect[s_test], reference[r_fit], reference[r_test]
    norm = Normaliser().fit(np.vstack([s_fit, r_fit]))
    X = norm.transform(np.vstack([s_fit, r_fit]))
    y = np.concatenate([np.ones(len(s_fit)), np.zeros(len(r_fit))])
    w = fit_logistic(X, y, l2)
    score_s = w[0] + norm.transform(s_test) @ w[1:]
    score_r = w[0] + norm.transform(r_test) @ w[1:]
    t, df, p = welch_t_test(score_s, score_r)
    return SplitTest(p, t, df, cohens_d(score_s, score_r), w, score_s, score_r)


def combine_p(p_values: list[float]) -> float:
    """min(1, 2 · median): a valid p-value from dependent tests on repeated random splits."""
    return float(min(1.0, 2 * np.median(p_values))) if len(p_values) > 1 else float(p_values[0])
