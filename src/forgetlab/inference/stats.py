"""The dataset-inference test (Maini et al. 2024), cross-fitted: normalise, aggregate, one-sided Welch t-test.

Each side (suspect texts, known non-member reference texts) is shuffled and cut into halves A and B.
A *fold* fits on one half of each side and tests the other: clipping bounds and standardisation are
fitted on the fitting halves, then an L2-regularised logistic regression (suspect = 1) whose strength
is chosen by k-fold cross-validation *within the fitting halves*; the testing halves' aggregated
scores are compared by a one-sided Welch t-test (H1: suspect scores are higher). Nothing computed
from the testing halves reaches the fit.

Cross-fitting runs the fold both ways (fit A, test B; fit B, test A), so every text is tested once.
The two p-values are strongly dependent: for a linear aggregator both statistics are close to the
product of the mean differences of A and B (their z correlate about 0.87 under a simulated null),
so they are combined by a rule valid under any dependence, Bonferroni's p = min(1, 2 · min(p1, p2)).
Twice the mean (Rüschendorf 1982; Vovk and Wang 2020), also valid, had half its power in simulation
(docs/inference.md); assuming independence (Stouffer) rejected 12% of nulls at α = 0.05. Repeated random splits
(``repeats``) are combined as min(1, 2 · median), valid for dependent p-values too (Meinshausen,
Meier and Bühlmann 2009).

Power: from the fitting halves' out-of-fold effect size d, ``texts_needed`` gives the texts per side
for the cross-fit test to reach a target power (see its docstring and docs/inference.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)   # candidate penalties, chosen by cross-validation
CV_FOLDS = 5

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


def choose_l2(X: np.ndarray, y: np.ndarray, seed: int, grid: tuple[float, ...] = L2_GRID,
              folds: int = CV_FOLDS) -> tuple[float, float]:
    """The strength in ``grid`` with the highest out-of-fold log-likelihood over ``folds`` folds of
    (X, y), and at that strength the mean over folds of Cohen's d of the held-out fold's scores (each
    fold's scores come from one aggregator, so their scale is shared; pooling the folds' scores biased d
    towards 0 in simulation). With one strength in the grid no cross-validation runs and d is nan."""
    if len(grid) == 1:
        return grid[0], math.nan
    fold = np.random.default_rng([seed, 2]).permutation(len(y)) % folds
    best = (-math.inf, grid[0], math.nan)
    for l2 in grid:
        scores = np.empty(len(y))
        for k in range(folds):
            w = fit_logistic(X[fold != k], y[fold != k], l2)
            scores[fold == k] = w[0] + X[fold == k] @ w[1:]
        loglik = -np.logaddexp(0.0, np.where(y == 1, -scores, scores)).sum()
        if loglik > best[0]:
            ds = [cohens_d(scores[(fold == k) & (y == 1)], scores[(fold == k) & (y == 0)]) for k in range(folds)
                  if min(((fold == k) & (y == 1)).sum(), ((fold == k) & (y == 0)).sum()) >= 2]
            best = (loglik, l2, float(np.mean(ds)) if ds else math.nan)
    return best[1], best[2]


@dataclass
class FoldTest:
    """One fold: what was fitted on the fitting halves, and the test on the testing halves."""
    p_value: float
    t: float
    df: float
    effect_size: float             # Cohen's d of the testing halves' scores
    fit_effect_size: float         # the fitting halves' cross-validated Cohen's d (nan without CV)
    l2: float
    normaliser: Normaliser
    weights: np.ndarray
    suspect_scores: np.ndarray
    reference_scores: np.ndarray


def fold_test(s_fit: np.ndarray, r_fit: np.ndarray, s_test: np.ndarray, r_test: np.ndarray, seed: int,
              grid: tuple[float, ...] = L2_GRID) -> FoldTest:
    """Fit the normaliser, the strength and the aggregator on (s_fit, r_fit) only; test (s_test, r_test)."""
    norm = Normaliser().fit(np.vstack([s_fit, r_fit]))
    X = norm.transform(np.vstack([s_fit, r_fit]))
    y = np.concatenate([np.ones(len(s_fit)), np.zeros(len(r_fit))])
    l2, fit_d = choose_l2(X, y, seed, grid)
    w = fit_logistic(X, y, l2)
    score_s = w[0] + norm.transform(s_test) @ w[1:]
    score_r = w[0] + norm.transform(r_test) @ w[1:]
    t, df, p = welch_t_test(score_s, score_r)
    return FoldTest(p, t, df, cohens_d(score_s, score_r), fit_d, l2, norm, w, score_s, score_r)


def split_halves(n: int, seed: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(half A, half B) indices of one side's ``n`` rows: a seeded shuffle, cut in half."""
    order = np.random.default_rng([seed, side]).permutation(n)
    return order[: n // 2], order[n // 2:]


def split_test(suspect: np.ndarray, reference: np.ndarray, seed: int, grid: tuple[float, ...] = L2_GRID) -> FoldTest:
    """The single split: fit on halves A, test halves B (one fold of ``cross_fit_test``)."""
    (sa, sb), (ra, rb) = split_halves(len(suspect), seed, 0), split_halves(len(reference), seed, 1)
    return fold_test(suspect[sa], reference[ra], suspect[sb], reference[rb], seed, grid)


@dataclass
class CrossFit:
    """Both folds of one split and their combined p-value."""
    p_value: float
    folds: tuple[FoldTest, FoldTest]

    @property
    def effect_size(self) -> float:
        return float(np.mean([f.effect_size for f in self.folds]))

    @property
    def fit_effect_size(self) -> float:
        return float(np.mean([f.fit_effect_size for f in self.folds]))


def cross_fit_p(p1: float, p2: float) -> float:
    """min(1, 2 · min(p1, p2)) (Bonferroni): a valid p-value whatever the dependence between the two folds."""
    return float(min(1.0, 2 * min(p1, p2)))


def cross_fit_test(suspect: np.ndarray, reference: np.ndarray, seed: int,
                   grid: tuple[float, ...] = L2_GRID) -> CrossFit:
    """Fit on halves A and test B, fit on B and test A; combine the two p-values by ``cross_fit_p``."""
    (sa, sb), (ra, rb) = split_halves(len(suspect), seed, 0), split_halves(len(reference), seed, 1)
    one = fold_test(suspect[sa], reference[ra], suspect[sb], reference[rb], seed, grid)
    two = fold_test(suspect[sb], reference[rb], suspect[sa], reference[ra], seed, grid)
    return CrossFit(cross_fit_p(one.p_value, two.p_value), (one, two))


def combine_p(p_values: list[float]) -> float:
    """min(1, 2 · median): a valid p-value from dependent tests on repeated random splits."""
    return float(min(1.0, 2 * np.median(p_values))) if len(p_values) > 1 else float(p_values[0])


def texts_needed(d: float, alpha: float, power: float = 0.8) -> float:
    """Texts per side for the cross-fit test to reach ``power`` at effect size d > 0 (inf if d ≤ 0).

    Each fold tests m = n/2 texts per side; a one-sided two-sample test of standardised shift d on m
    a side has power Φ(d·√(m/2) − z). The combined p is below α when a fold's is below α/2, and the
    folds' statistics are nearly the same, so z = z_{1−α/2} and m = 2·((z_{1−α/2} + z_{power}) / d)², n = 2m = 4·((z_{1−α/2} + z_{power}) / d)².
    """
    if not d > 0:
        return math.inf
    return 4 * ((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / d) ** 2


def power_at(n: float, d: float, alpha: float) -> float:
    """The approximate power of the cross-fit test with n texts per side at effect size d (inverse of ``texts_needed``)."""
    if not d > 0:
        return alpha
    return float(stats.norm.cdf(d * math.sqrt(n / 4) - stats.norm.ppf(1 - alpha / 2)))


def texts_needed_from_curve(sizes: list[int], p_values: list[float], alpha: float) -> float:
    """Where the least-squares line of log p against n (texts per side) reaches log α; inf when p does
    not fall with n. For a fixed effect −log p grows about linearly in n (z² ∝ n), hence a line."""
    n, logp = np.asarray(sizes, float), np.log(np.clip(p_values, 1e-300, 1.0))
    if len(n) < 3:
        return math.inf
    slope, intercept = np.polyfit(n, logp, 1)
    return float((math.log(alpha) - intercept) / slope) if slope < 0 else math.inf


def verdict(p_value: float, alpha: float, n: int, needed: float, texts_per_unit: float = 1.0) -> str:
    """"member" (p < α); "no evidence" (p ≥ α and about ``needed`` ≤ n units per side gave the power
    asked, or no effect was seen to size a larger test by: needed = inf); else "inconclusive", the units
    needed told as texts (``texts_per_unit``: the texts a joined unit holds on average)."""
    if p_value < alpha:
        return "member"
    if needed <= n or math.isinf(needed):
        return "no evidence"
    return f"inconclusive: about {round_up(needed * texts_per_unit):,} texts per side would be needed"


def round_up(x: float) -> int:
    """Up to two significant digits: 1234 -> 1300."""
    step = 10 ** max(0, int(math.log10(max(x, 1))) - 1)
    return int(math.ceil(x / step) * step)
