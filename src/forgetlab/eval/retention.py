"""General-ability retention of a causal LM: perplexity on a general corpus and zero-shot
multiple-choice accuracy by log-likelihood scoring, measured before the stream and after each task."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..config import RetentionConfig
from ..data.text_files import read_lines, read_text
from ..errors import UserError
from ..models.backbones import Backbone
from ..models.causal_lm import IGNORE_INDEX, lm_labels, token_nll
from ..models.peft import max_positions
from ..train.batching import pad


def corpus_texts(name: str, max_chars: int) -> list[str]:
    """Lines of a corpus: ``wikitext2`` (its valid split in FORGETLAB_DATA_DIR) or a text file."""
    path = _builtin("wikitext2/valid.txt") if name == "wikitext2" else Path(name)
    if not path.is_file():
        raise UserError(f"eval.retention.corpus: {path} not found (wikitext2 needs FORGETLAB_DATA_DIR, or give a text file)")
    text = read_text(path)[:max_chars]
    return [line for line in text.splitlines() if line.strip()]


def qa_items(name: str, split: str, limit: int) -> list[dict]:
    """Multiple-choice items ``{question, choices, answer}`` (answer a letter or an index): ``mmlu``
    (qa_probes/mmlu in FORGETLAB_DATA_DIR) or a JSONL file; the first ``limit`` items."""
    path = _builtin(f"qa_probes/mmlu/{split}.jsonl") if name == "mmlu" else Path(name)
    if not path.is_file():
        raise UserError(f"eval.retention.qa: {path} not found (mmlu needs FORGETLAB_DATA_DIR, or give a JSONL file)")
    items = []
    for n, line in enumerate(read_lines(path), 1):
        if len(items) == limit:
            break
        try:
            item = json.loads(line)
            answer = item["answer"]
            index = "ABCDEFGHIJ".index(answer) if isinstance(answer, str) else int(answer)
            items.append({"question": item["question"], "choices": list(item["choices"]), "answer": index})
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{n}: not a multiple-choice item ({type(exc).__name__}: {exc})") from None
    return items


def _builtin(rel: str) -> Path:
    return Path(os.environ.get("FORGETLAB_DATA_DIR", "")) / rel


def _window(backbone: Backbone, cfg: RetentionConfig) -> int:
    return min(cfg.max_length, max_positions(backbone.model) or cfg.max_length)


@torch.inference_mode()
def perplexity(backbone: Backbone, texts: list[str], window: int, max_tokens: int, device: torch.device) -> float:
    """exp(mean next-token NLL) over the first ``max_tokens`` tokens of the texts joined by newlines,
    cut into windows of ``window`` tokens (each window predicts its tokens 2..window)."""
    prefix = len(backbone.tokenize([""])[0])                      # special tokens the tokenizer adds
    ids = backbone.tokenize(["\n".join(texts)], max_length=max_tokens + prefix)[0][prefix:][:max_tokens]
    windows = [ids[i: i + window] for i in range(0, len(ids), window)]
    windows = [w for w in windows if len(w) > 1]
    total, count = 0.0, 0
    for start in range(0, len(windows), 8):
        batch, mask = pad(windows[start: start + 8], backbone.pad_id)
        batch, mask = batch.to(device), mask.to(device)
        nll, predicted = token_nll(backbone.lm_logits(batch, mask), lm_labels(batch, mask))
        total, count = total + nll.sum().item(), count + int(predicted.sum())
    return math.exp(total / count)


@torch.inference_mode()
def choice_logprobs(backbone: Backbone, context: str, choices: list[str], window: int,
                    device: torch.device) -> list[float]:
    """Summed log-probability of each choice's tokens after the context (context and choice are
    tokenized apart, the context cut from the left to fit the window)."""
    prefix = len(backbone.tokenize([""])[0])
    ctx = backbone.tokenize([context], max_length=10_000)[0]
    conts = [t[prefix:] for t in backbone.tokenize([" " + c for c in choices], max_length=window)]
    seqs, starts = [], []
    for cont in conts:
        keep = max(1, window - len(cont))
        head = ctx[:prefix] + ctx[prefix:][-(keep - prefix):] if keep > prefix else ctx[-keep:]
        seqs.append(head + cont)
        starts.append(len(head))
    batch, mask = pad(seqs, backbone.pad_id)
    labels = lm_labels(batch, mask)
    for i, start in enumerate(starts):
        labels[i, :start] = IGNORE_INDEX                # the context is given, not scored
    nll, _ = token_nll(backbone.lm_logits(batch.to(device), mask.to(device)), labels.to(device))
    return (-nll.sum(1)).tolist()


def qa_accuracy(backbone: Backbone, items: list[dict], window: int, device: torch.device) -> float:
    """Zero-shot accuracy: the choice with the highest summed log-probability is the answer."""
    right = 0
    for item in items:
        context = f"Question: {item['question']}\nAnswer:"
        scores = choice_logprobs(backbone, context, item["choices"], window, device)
        right += int(max(range(len(scores)), key=scores.__getitem__) == item["answer"])
    return right / len(items)


def retention_record(cfg: RetentionConfig, rows: list[dict]) -> dict:
    """General ability before the stream (index 0) and after each task, and its change over the
    stream: ``perplexity_ratio`` (after / before) and ``qa_accuracy_change`` (after − before), None
    where not measured."""
    ppl, qa = [r["perplexity"] for r in rows], [r["qa_accuracy"] for r in rows]
    return {"corpus": cfg.corpus, "qa": cfg.qa, "perplexity": ppl, "qa_accuracy": qa,
            "perplexity_ratio": ppl[-1] / ppl[0] if ppl[0] else None,
            "qa_accuracy_change": qa[-1] - qa[0] if qa[0] is not None else None}


class Retention:
    """The corpus and items of a run, loaded once; ``measure`` gives one row of figures."""

    def __init__(self, cfg: RetentionConfig):
        self.cfg = cfg
        self.texts = corpus_texts(cfg.corpus, cfg.max_tokens * 20) if cfg.corpus else None
        self.items = qa_items(cfg.qa, cfg.qa_split, cfg.max_items) if cfg.qa else None

    def measure(self, backbone: Backbone, device: torch.device) -> dict:
        was_training = backbone.training
        backbone.eval()
        window = _window(backbone, self.cfg)
        row = {"perplexity": perplexity(backbone, self.texts, window, self.cfg.max_tokens, device) if self.texts else None,
               "qa_accuracy": qa_accuracy(backbone, self.items, window, device) if self.items else None}
        backbone.train(was_training)
        return row
