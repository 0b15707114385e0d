"""Dataset inference: did this causal LM train on this data set? ``infer`` runs the whole test."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.corpus import read_texts
from ..errors import UserError
from ..runtime import environment, write_json
from .features import CausalLM, feature_names, passes_per_text, text_features
from .stats import (auc, combine_p, cross_fit_test, power_at, texts_needed, texts_needed_from_curve, verdict)

MIN_TEXTS = 8                   # per side: each half needs a few texts for a variance
SIZES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
POWER = 0.8                     # the power "no evidence" asks for


@dataclass
class InferenceResult:
    p_value: float
    effect_size: float
    verdict: str
    n: dict[str, int]            # units tested per side: {"suspect": ..., "reference": ...}
    texts_needed: float          # per side, for the power asked, at the effect seen (inf: none seen)
    feature_auc: dict[str, float]
    p_by_size: list[dict]
    raw: dict[str, Any]
    features: dict[str, np.ndarray]   # the [units × features] matrices of each side, in tested order


def infer(model: str, suspect: str | Path | list[str], reference: str | Path | list[str], *, n: int | None = None,
          seed: int = 0, repeats: int = 1, references: list[str] = (), join_min_chars: int = 0,
          max_length: int = 512, batch_size: int = 16, device: str = "auto", alpha: float = 0.05,
          trust_remote_code: bool = False, out: str | Path | None = None, show_progress: bool = True) -> InferenceResult:
    """Test whether ``model`` was trained on the ``suspect`` texts, against ``reference`` texts known not
    to be members (same distribution). Every text of each side is used; ``n`` caps the texts per side
    (a seeded random sample). With ``join_min_chars`` > 0, consecutive texts of one side are joined into
    units of at least that many characters before scoring. The test is cross-fitted (``stats.py``);
    with ``repeats`` > 1 it runs on that many random splits and the p-values are combined."""
    if n is not None and n < MIN_TEXTS:
        raise UserError(f"--n {n}: at least {MIN_TEXTS} texts per side are needed")
    rng = np.random.default_rng(seed)
    sides = {}
    for side, source, flag in (("suspect", suspect, "--suspect"), ("reference", reference, "--reference")):
        texts = _texts(source, flag)
        texts = [texts[i] for i in rng.permutation(len(texts))[: n]]
        units = join_texts(texts, join_min_chars)
        if len(units) < MIN_TEXTS:
            raise UserError(f"{flag}: at least {MIN_TEXTS} texts (units after joining) are needed; it gives {len(units)}")
        sides[side] = (len(texts), units)

    lm = CausalLM(model, max_length=max_length, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
    refs = [CausalLM(r, max_length=max_length, batch_size=batch_size, device=device,
                     trust_remote_code=trust_remote_code) for r in references]
    names = feature_names(len(refs))
    s_feat, r_feat = _score(lm, refs, sides["suspect"][1], sides["reference"][1], seed, show_progress)

    texts_per_unit = (sides["suspect"][0] + sides["reference"][0]) / (len(s_feat) + len(r_feat))
    result = dataset_test(s_feat, r_feat, seed=seed, repeats=repeats, alpha=alpha, texts_per_unit=texts_per_unit)
    feature_auc = {name: auc(s_feat[:, j], r_feat[:, j]) for j, name in enumerate(names)}
    first = result["fits"][0].folds[0]
    n_s, n_r = len(s_feat), len(r_feat)
    raw = {
        "model": model, "suspect": _source(suspect), "reference": _source(reference), "references": list(references),
        "texts": {"suspect": sides["suspect"][0], "reference": sides["reference"][0]},
        "join_min_chars": join_min_chars, "n": {"suspect": n_s, "reference": n_r}, "n_cap": n,
        "seed": seed, "repeats": repeats, "alpha": alpha,
        **{k: v for k, v in result.items() if k != "fits"},
        "feature_auc": feature_auc,
        "aggregator_weights": dict(zip(["bias", *names], first.weights.tolist())),
        "scores": {"suspect": first.suspect_scores.tolist(), "reference": first.reference_scores.tolist()},
        "environment": environment(seed, lm.device),
    }
    if out is not None:
        from ..report.inference import write_inference_page

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "inference.json", raw)
        write_inference_page(raw, folder / "report.html")
    return InferenceResult(raw["p_value"], raw["effect_size"], raw["verdict"], raw["n"], result["texts_needed"] or math.inf,
                           feature_auc, raw["p_by_size"], raw, {"suspect": s_feat, "reference": r_feat})


def dataset_test(s_feat: np.ndarray, r_feat: np.ndarray, *, seed: int = 0, repeats: int = 1,
                  alpha: float = 0.05, texts_per_unit: float = 1.0) -> dict[str, Any]:
    """The statistics of ``infer`` on feature matrices (rows: units, in random order): the cross-fitted
    p-value over ``repeats`` splits, the p-value at growing sizes, the power estimate (in units) and the
    verdict (its count in texts: ``texts_per_unit`` texts a joined unit holds on average).
    The "fits" entry holds the ``CrossFit`` of each split; every other entry is plain JSON."""
    def test(m: int) -> tuple[float, list]:
        fits = [cross_fit_test(s_feat[:m], r_feat[:m], seed * 1_000 + i) for i in range(repeats)]
        return combine_p([f.p_value for f in fits]), fits

    n_s, n_r = len(s_feat), len(r_feat)
    p_value, fits = test(max(n_s, n_r))
    sizes = sorted({m for m in SIZES if m < min(n_s, n_r)} | {min(n_s, n_r)})
    p_by_size = [{"n": m, "p_value": test(m)[0]} for m in sizes if m >= MIN_TEXTS]
    fit_d = float(np.median([f.fit_effect_size for f in fits]))
    from_d = texts_needed(fit_d, alpha, POWER)
    from_curve = texts_needed_from_curve([s["n"] for s in p_by_size], [s["p_value"] for s in p_by_size], alpha)
    finite = [x for x in (from_d, from_curve) if math.isfinite(x)]
    needed = max(finite) if finite else math.inf
    return {
        "p_value": p_value, "verdict": verdict(p_value, alpha, min(n_s, n_r), needed, texts_per_unit),
        "effect_size": float(np.median([f.effect_size for f in fits])),
        "combination": "cross-fit: min(1, 2·min) of the two folds (Bonferroni); repeats: min(1, 2·median)",
        "fold_p_values": [[f.p_value for f in cf.folds] for cf in fits],
        "split_p_values": [cf.p_value for cf in fits],
        "t": [[f.t for f in cf.folds] for cf in fits], "df": [[f.df for f in cf.folds] for cf in fits],
        "l2": [[f.l2 for f in cf.folds] for cf in fits],
        "fit_effect_size": fit_d, "power": POWER, "power_at_n": power_at(min(n_s, n_r), fit_d, alpha),
        "texts_needed": _finite(needed), "texts_needed_from_effect": _finite(from_d),
        "texts_needed_from_curve": _finite(from_curve),
        "p_by_size": p_by_size, "fits": fits,
    }


def join_texts(texts: list[str], min_chars: int) -> list[str]:
    """Consecutive texts joined by a space into units of at least ``min_chars`` characters (0: no
    joining); a short remainder is added to the last unit."""
    if min_chars <= 0:
        return list(texts)
    units, current = [], []
    for text in texts:
        current.append(text)
        if len(" ".join(current)) >= min_chars:
            units.append(" ".join(current))
            current = []
    if current:
        units = units[:-1] + [" ".join(units[-1:] + current)]
    return units


def _score(lm: CausalLM, refs: list[CausalLM], suspects: list[str], references: list[str], seed: int,
           show_progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """Both sides' feature matrices, after a line with the cost (from a timed batch after a warm-up one)
    and under a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    passes = (len(suspects) + len(references)) * passes_per_text(len(refs))
    lm.token_logprobs(suspects[: lm.batch_size])                  # warm-up: the first call is slower
    start = time.perf_counter()
    lm.token_logprobs(suspects[: lm.batch_size])
    per_batch = time.perf_counter() - start
    if show_progress:
        console.print(f"scoring {len(suspects)} + {len(references)} texts × {passes_per_text(len(refs))} passes = "
                      f"{passes:,} forward passes; about {per_batch * passes / lm.batch_size / 60:.1f} min "
                      f"(a batch of {lm.batch_size}: {per_batch:.2f} s)")
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not (show_progress and console.is_terminal)) as bar:
        job = bar.add_task("scoring", total=passes)
        step = lambda k: bar.advance(job, k)  # noqa: E731
        s_feat = text_features(lm, suspects, refs, seed, step)
        r_feat = text_features(lm, references, refs, seed, step)
    return s_feat, r_feat


def _texts(source: str | Path | list[str], flag: str) -> list[str]:
    if isinstance(source, (str, Path)):
        return read_texts(source)
    empty = [i for i, t in enumerate(source) if not t.strip()]
    if empty:
        raise UserError(f"{flag}: text {empty[0] + 1} is empty")
    return list(source)


def _finite(x: float) -> float | None:
    """``x``, or None (JSON null) for infinity: no effect seen, no text count estimated."""
    return x if math.isfinite(x) else None


def _source(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"{len(source)} texts"
