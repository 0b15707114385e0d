"""Membership signals of each text under a causal LM (Maini et al. 2024, after Carlini et al. 2021,
Shi et al. 2024): each is weak alone; the test in ``stats.py`` aggregates them over a data set.

Per text, from the log-probability of each of its tokens given the ones before:
- ``log_ppl``: the mean negative log-probability (log perplexity);
- ``min_k_<k>`` / ``max_k_<k>``: the mean log-probability of the k% least / most likely tokens;
- ``zlib_ratio``: log perplexity over the zlib-compressed length of the text in bytes;
- ``pert_<name>``: log perplexity of a perturbed copy minus that of the text (a model that memorised
  the exact text is hurt more by a small edit);
- ``ref_<i>``: log perplexity under the model minus that under reference model i.
"""
from __future__ import annotations

import math
import random
import zlib
from collections.abc import Callable

import numpy as np
import torch

from ..errors import UserError
from ..models.backbones import is_causal_config, resolve_model_path
from ..models.causal_lm import lm_labels, load_causal_lm, token_nll
from ..runtime import pick_device

K_FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.5)


def _swap(text: str, rng: random.Random, rate: float = 0.05) -> str:
    chars = list(text)
    for i in range(len(chars) - 1):
        if chars[i].isalpha() and chars[i + 1].isalpha() and rng.random() < rate:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def _delete(text: str, rng: random.Random, rate: float = 0.05) -> str:
    kept = "".join(c for c in text if rng.random() >= rate)
    return kept or text


# Edits that need no other model; each gets a generator seeded from the text's index.
PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "lowercase": lambda t, rng: t.lower(),
    "uppercase": lambda t, rng: t.upper(),
    "whitespace": lambda t, rng: t.replace(" ", "  "),
    "swap": _swap,
    "delete": _delete,
}


class CausalLM:
    """A causal LM and its tokenizer; ``token_logprobs`` scores texts."""

    def __init__(self, name: str, *, max_length: int = 512, batch_size: int = 16, device: str = "auto",
                 trust_remote_code: bool = False):
        from transformers import AutoConfig

        from ..models import lstm_lm  # noqa: F401  (registers forgetlab's LSTM LM with the Auto classes)

        try:
            config = AutoConfig.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as exc:
            raise UserError(f"--model: cannot load '{name}': {_first_line(exc)}") from None
        if not is_causal_config(config):
            archs = ", ".join(getattr(config, "architectures", None) or [config.model_type])
            raise UserError(f"--model {name}: not a causal LM ({archs}); dataset inference needs next-token probabilities")
        self.model, self.tokenizer = load_causal_lm(name, trust_remote_code=trust_remote_code, key="--model")
        self.name = name
        self.device = pick_device(device)
        self.model.to(self.device).eval()
        positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length = min(max_length, positions or max_length)
        self.batch_size = batch_size
        start = self.tokenizer.bos_token_id
        self.start = [start if start is not None else self.tokenizer.eos_token_id]
        if self.start[0] is None:
            self.start = []
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.start[0] if self.start else 0)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Each text's tokens after the start token, cut to ``max_length`` in all."""
        pieces = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [(self.start + p)[: self.max_length] for p in pieces]

    @torch.inference_mode()
    def token_logprobs(self, texts: list[str], progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
        """For each text, log p(token_t | tokens before t) of its tokens (the first token is scored
        after the start token when the model has one), in batches of similar length; ``progress`` is
        called with each batch's size."""
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[np.ndarray] = [np.zeros(0)] * len(ids)
        for b in range(0, len(order), self.batch_size):
            chunk = order[b: b + self.batch_size]
            width = max(len(ids[i]) for i in chunk)
            batch = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(batch)
            for row, i in enumerate(chunk):
                batch[row, : len(ids[i])] = torch.tensor(ids[i])
                mask[row, : len(ids[i])] = 1
            batch, mask = batch.to(self.device), mask.to(self.device)
            nll, _ = token_nll(self.model(input_ids=batch, attention_mask=mask).logits, lm_labels(batch, mask))
            picked = (-nll).cpu().numpy()
            for row, i in enumerate(chunk):
                out[i] = picked[row, : len(ids[i]) - 1].astype(np.float64)
            if progress is not None:
                progress(len(chunk))
        return out


def log_ppl(logp: np.ndarray) -> float:
    return float(-logp.mean())


def min_k(logp: np.ndarray, k: float) -> float:
    """Mean log-probability of the ceil(k·n) least likely tokens."""
    m = max(1, math.ceil(k * len(logp)))
    return float(np.sort(logp)[:m].mean())


def max_k(logp: np.ndarray, k: float) -> float:
    """Mean log-probability of the ceil(k·n) most likely tokens."""
    m = max(1, math.ceil(k * len(logp)))
    return float(np.sort(logp)[-m:].mean())


def zlib_ratio(logp: np.ndarray, text: str) -> float:
    return log_ppl(logp) / len(zlib.compress(text.encode("utf-8")))


def feature_names(references: int = 0) -> list[str]:
    return (["log_ppl"] + [f"min_k_{round(k * 100)}" for k in K_FRACTIONS] + [f"max_k_{round(k * 100)}" for k in K_FRACTIONS]
            + ["zlib_ratio"] + [f"pert_{p}" for p in PERTURBATIONS] + [f"ref_{i}" for i in range(references)])


def perturb(texts: list[str], name: str, seed: int) -> list[str]:
    """The texts under one perturbation; text i's edits are drawn from a generator seeded by (seed, i)."""
    edit = PERTURBATIONS[name]
    return [edit(t, random.Random(f"{seed}-{name}-{i}")) for i, t in enumerate(texts)]


def passes_per_text(references: int = 0) -> int:
    """Forward passes ``text_features`` makes per text: the text, each perturbation, each reference model."""
    return 1 + len(PERTURBATIONS) + references


def text_features(model: CausalLM, texts: list[str], references: list[CausalLM] = (), seed: int = 0,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """The [texts × features] matrix, columns in ``feature_names(len(references))`` order; ``progress``
    is called with the texts scored after each batch of each pass."""
    logps = model.token_logprobs(texts, progress)
    short = [i for i, lp in enumerate(logps) if len(lp) == 0]
    if short:
        raise UserError(f"text {short[0] + 1}: too short to score (it has no token after the start token)")
    base = np.array([log_ppl(lp) for lp in logps])
    columns = [base]
    columns += [np.array([min_k(lp, k) for lp in logps]) for k in K_FRACTIONS]
    columns += [np.array([max_k(lp, k) for lp in logps]) for k in K_FRACTIONS]
    columns.append(np.array([zlib_ratio(lp, t) for lp, t in zip(logps, texts)]))
    for name in PERTURBATIONS:
        perturbed = model.token_logprobs(perturb(texts, name, seed), progress)
        columns.append(np.array([log_ppl(lp) if len(lp) else b for lp, b in zip(perturbed, base)]) - base)
    for ref in references:
        columns.append(base - np.array([log_ppl(lp) for lp in ref.token_logprobs(texts, progress)]))
    return np.stack(columns, axis=1)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
