"""Dataset inference: did this causal LM train on this data set? ``infer`` runs the whole test."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.corpus import read_texts
from ..errors import UserError
from ..runtime import environment, write_json
from .features import CausalLM, feature_names, text_features
from .stats import auc, combine_p, split_test

MIN_TEXTS = 8                   # per side: each half needs a few texts for a variance
SIZES = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass
class InferenceResult:
    p_value: float
    effect_size: float
    n: int
    feature_auc: dict[str, float]
    p_by_size: list[dict]
    raw: dict[str, Any]


def infer(model: str, suspect: str | Path | list[str], reference: str | Path | list[str], *, n: int | None = None,
          seed: int = 0, repeats: int = 1, references: list[str] = (), max_length: int = 512, batch_size: int = 16,
          device: str = "auto", alpha: float = 0.05, trust_remote_code: bool = False,
          out: str | Path | None = None) -> InferenceResult:
    """Test whether ``model`` was trained on the ``suspect`` texts, against ``reference`` texts known not
    to be members (same distribution). ``n`` texts are drawn from each side (default: all the smaller
    side has); with ``repeats`` > 1 the test runs on that many random splits and the p-values are combined."""
    s_texts, r_texts = _texts(suspect, "--suspect"), _texts(reference, "--reference")
    n = _check_n(n, len(s_texts), len(r_texts))
    rng = np.random.default_rng(seed)
    s_texts = [s_texts[i] for i in rng.permutation(len(s_texts))[:n]]
    r_texts = [r_texts[i] for i in rng.permutation(len(r_texts))[:n]]

    lm = CausalLM(model, max_length=max_length, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
    refs = [CausalLM(r, max_length=max_length, batch_size=batch_size, device=device,
                     trust_remote_code=trust_remote_code) for r in references]
    names = feature_names(len(refs))
    s_feat = text_features(lm, s_texts, refs, seed)
    r_feat = text_features(lm, r_texts, refs, seed)

    def test(m: int) -> tuple[float, list]:
        splits = [split_test(s_feat[:m], r_feat[:m], seed * 1_000 + i) for i in range(repeats)]
        return combine_p([t.p_value for t in splits]), splits

    p_value, splits = test(n)
    p_by_size = [{"n": m, "p_value": test(m)[0]} for m in sorted({m for m in SIZES if m < n} | {n}) if m >= MIN_TEXTS]
    feature_auc = {name: auc(s_feat[:, j], r_feat[:, j]) for j, name in enumerate(names)}
    effect = float(np.median([t.effect_size for t in splits]))
    raw = {
        "model": model, "suspect": _source(suspect), "reference": _source(reference), "references": list(references),
        "n": n, "seed": seed, "repeats": repeats, "alpha": alpha,
        "p_value": p_value, "effect_size": effect,
        "t": float(np.median([t.t for t in splits])), "df": float(np.median([t.df for t in splits])),
        "split_p_values": [t.p_value for t in splits],
        "verdict": "member" if p_value < alpha else "no evidence",
        "feature_auc": feature_auc,
        "aggregator_weights": dict(zip(["bias", *names], splits[0].weights.tolist())),
        "p_by_size": p_by_size,
        "scores": {"suspect": splits[0].suspect_scores.tolist(), "reference": splits[0].reference_scores.tolist()},
        "environment": environment(seed, lm.device),
    }
    if out is not None:
        from ..report.inference import write_inference_page

        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "inference.json", raw)
        write_inference_page(raw, folder / "report.html")
    return InferenceResult(p_value, effect, n, feature_auc, p_by_size, raw)


def _texts(source: str | Path | list[str], flag: str) -> list[str]:
    if isinstance(source, (str, Path)):
        return read_texts(source)
    empty = [i for i, t in enumerate(source) if not t.strip()]
    if empty:
        raise UserError(f"{flag}: text {empty[0] + 1} is empty")
    return list(source)


def _check_n(n: int | None, suspects: int, references: int) -> int:
    have = min(suspects, references)
    n = have if n is None else n
    if n < MIN_TEXTS:
        raise UserError(f"--n {n}: at least {MIN_TEXTS} texts per side are needed")
    if n > suspects:
        raise UserError(f"--n {n}: the suspect set has only {suspects} texts")
    if n > references:
        raise UserError(f"--n {n}: the reference set has only {references} texts")
    return n


def _source(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"{len(source)} texts"
