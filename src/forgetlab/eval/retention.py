"""General ability of a causal LM, measured before the stream and after each task (the matrix G):
a suite of probes, each beside its chance (or majority) level.

- ``perplexity`` on a general corpus (WikiText-2), lower is better;
- ``qa_accuracy``: zero-shot multiple choice (MMLU) by log-likelihood, chance 1/choices;
- ``boolq_accuracy``: BoolQ yes/no by log-likelihood, against the majority answer's rate;
- ``gsm8k_accuracy``: GSM8K by greedy generation, the final number, chance 0;
- ``held_out_nll`` and ``held_out_score``: instruction data the model is never trained on, its
  responses' NLL per token and its generated answers scored as the tasks are.

A probe whose score before the stream is within two binomial standard errors of its chance level
is flagged uninformative: for that model its drop cannot be read as forgetting.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from ..config import GeneralConfig, RetentionConfig
from ..data.text_files import read_lines, read_text
from ..errors import UserError
from ..models.backbones import Backbone
from ..models.causal_lm import IGNORE_INDEX, lm_labels, token_nll
from ..models.peft import max_positions
from ..train.batching import pad

# probe -> (direction, what it is); the order of the report's columns
PROBES = {"perplexity": ("lower", "perplexity of the general corpus"),
          "qa_accuracy": ("higher", "zero-shot multiple choice by log-likelihood"),
          "boolq_accuracy": ("higher", "BoolQ yes/no by log-likelihood"),
          "gsm8k_accuracy": ("higher", "GSM8K by generation (final number)"),
          "held_out_nll": ("lower", "held-out instruction data: response NLL per token"),
          "held_out_score": ("higher", "held-out instruction data: generated answers scored")}


def corpus_texts(name: str, max_chars: int, key: str = "eval.retention.corpus") -> list[str]:
    """Lines of a corpus: ``wikitext2`` (its valid split in FORGETLAB_DATA_DIR) or a text file."""
    path = _builtin("wikitext2/valid.txt") if name == "wikitext2" else Path(name)
    if not path.is_file():
        raise UserError(f"{key}: {path} not found (wikitext2 needs FORGETLAB_DATA_DIR, or give a text file)")
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
    """Summed log-probability of each choice's tokens (" " + choice) after the context (context and
    choice tokenized apart, the context cut from the left so the longest choice fits the window)."""
    from .likelihood import continuation_logprobs

    prompts, conts = _choice_inputs(backbone, [context], [choices], window)
    return continuation_logprobs(backbone, prompts, conts, device)[0]


def qa_accuracy(backbone: Backbone, items: list[dict], window: int, device: torch.device) -> float:
    """Zero-shot accuracy: the choice with the highest summed log-probability is the answer."""
    return _choice_accuracy(backbone, [f"Question: {item['question']}\nAnswer:" for item in items],
                            [item["choices"] for item in items], [item["answer"] for item in items], window, device)


def _choice_inputs(backbone: Backbone, contexts: list[str], choices: list[list[str]],
                   window: int) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Each context's ids and its choices' ids (" " + choice), as ``continuation_inputs``."""
    return continuation_inputs(backbone, contexts, [[" " + c for c in options] for options in choices], window)


def continuation_inputs(backbone: Backbone, contexts: list[str], continuations: list[list[str]],
                        window: int) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Each context's ids (cut from the left, the tokenizer's leading special tokens kept, so its longest
    continuation fits the window) and its continuations' ids (tokenized apart, without those special tokens)."""
    prefix = len(backbone.tokenize([""])[0])
    conts = [[t[prefix:] for t in backbone.tokenize(options, max_length=window)] for options in continuations]
    prompts = []
    for context, options in zip(contexts, conts):
        ids = backbone.tokenize([context], max_length=10_000)[0]
        keep = max(1, window - max(len(c) for c in options))
        prompts.append(ids[:prefix] + ids[prefix:][-(keep - prefix):] if keep > prefix else ids[-keep:])
    return prompts, conts


def _choice_accuracy(backbone: Backbone, contexts: list[str], choices: list[list[str]], answers: list[int],
                     window: int, device: torch.device) -> float:
    """How often the likeliest choice is the answer; prompts batched, each prompt's KV cache shared by
    its choices (``eval/likelihood.py``)."""
    from .likelihood import continuation_logprobs

    scores = continuation_logprobs(backbone, *_choice_inputs(backbone, contexts, choices, window), device)
    right = sum(int(max(range(len(s)), key=s.__getitem__) == answer) for s, answer in zip(scores, answers))
    return right / len(answers)


def boolq_items(limit: int) -> list[dict]:
    """The first ``limit`` BoolQ questions of qa_probes/boolq (its test split, the official dev set)."""
    path = _builtin("qa_probes/boolq/test.jsonl")
    if not path.is_file():
        raise UserError(f"eval.retention.boolq_items: {path} not found (BoolQ needs FORGETLAB_DATA_DIR)")
    items = []
    for line in read_lines(path):
        if len(items) == limit:
            break
        row = json.loads(line)
        items.append({"context": f"{row['passage'].strip()}\nQuestion: {row['question'].strip().rstrip('?')}?\nAnswer:",
                      "answer": int(str(row["label"]).lower() in ("true", "yes", "1"))})
    return items


def boolq_accuracy(backbone: Backbone, items: list[dict], window: int, device: torch.device) -> float:
    """The likelier of " no" / " yes" after the passage and question is the answer."""
    return _choice_accuracy(backbone, [it["context"] for it in items], [["no", "yes"]] * len(items),
                            [it["answer"] for it in items], window, device)


def chance_levels(qa: list[dict] | None, boolq: list[dict] | None, held_out) -> dict[str, float | None]:
    """What each probe scores by guessing: 1/choices, the majority answer's rate, 0 for free answers."""
    out: dict[str, float | None] = {"perplexity": None, "held_out_nll": None, "gsm8k_accuracy": 0.0}
    out["qa_accuracy"] = sum(1 / len(i["choices"]) for i in qa) / len(qa) if qa else None
    if boolq:
        yes = sum(i["answer"] for i in boolq) / len(boolq)
        out["boolq_accuracy"] = max(yes, 1 - yes)
    if held_out:
        out["held_out_score"] = sum(1 / len(e.options) if e.options else 0.0 for e in held_out) / len(held_out)
    return out


def informative(before: float | None, chance: float | None, n: int) -> bool | None:
    """Whether a score before the stream lies more than two binomial standard errors above chance."""
    if before is None or chance is None:
        return None
    return before > chance + 2 * math.sqrt(chance * (1 - chance) / n)


def retention_record(cfg: RetentionConfig, rows: list[dict], chance: dict | None = None,
                     items: dict | None = None, extra: dict | None = None) -> dict:
    """General ability before the stream (index 0) and after each task: each probe's values, its change
    from before the stream (TRACE's ΔR^G), chance level and whether it is informative; and the older
    keys ``perplexity_ratio`` (after / before) and ``qa_accuracy_change`` (after − before). ``extra``:
    more probes, as ``PROBES`` (an evaluation backend's columns)."""
    chance, items = chance or {}, items or {}
    ppl, qa = [r.get("perplexity") for r in rows], [r.get("qa_accuracy") for r in rows]
    probes = {}
    for name, (direction, about) in {**PROBES, **(extra or {})}.items():
        values = [r.get(name) for r in rows]
        if values[0] is None or None in values:
            continue
        probes[name] = {"about": about, "direction": direction, "values": values,
                        "change": [v - values[0] for v in values], "chance": chance.get(name),
                        "items": items.get(name),
                        "informative": informative(values[0], chance.get(name), items.get(name) or 1)}
    return {"corpus": cfg.corpus, "qa": cfg.qa, "held_out": cfg.held_out, "perplexity": ppl, "qa_accuracy": qa,
            "perplexity_ratio": ppl[-1] / ppl[0] if ppl[0] else None,
            "qa_accuracy_change": qa[-1] - qa[0] if qa[0] is not None else None,
            "probes": probes}


class Retention:
    """The probes' items, loaded once; ``measure`` gives one row of figures: the built-in probes of
    ``cfg`` (None: none) and an evaluation backend's columns (``eval.general``)."""

    def __init__(self, cfg: RetentionConfig | None, general: GeneralConfig | None = None):
        from ..data.instructions import load_task

        cfg = cfg or RetentionConfig(corpus=None, qa=None)
        self.cfg = cfg
        self.general = None
        if general:
            from .lm_eval_backend import HarnessTasks
            self.general = HarnessTasks(general)
        self.texts = corpus_texts(cfg.corpus, cfg.max_tokens * 20) if cfg.corpus else None
        self.items = qa_items(cfg.qa, cfg.qa_split, cfg.max_items) if cfg.qa else None
        self.boolq = boolq_items(cfg.boolq_items) if cfg.boolq_items else None
        self.gsm8k = load_task("gsm8k", None).test[: cfg.gsm8k_items] if cfg.gsm8k_items else None
        self.held_out = None
        if cfg.held_out:
            self.held_out_task = load_task(cfg.held_out, None)
            self.held_out = self.held_out_task.test[: cfg.held_out_items]
        self.chance = chance_levels(self.items, self.boolq, self.held_out)
        self.counts = {"perplexity": None, "qa_accuracy": len(self.items or []), "boolq_accuracy": len(self.boolq or []),
                       "gsm8k_accuracy": len(self.gsm8k or []), "held_out_nll": len(self.held_out or []),
                       "held_out_score": len(self.held_out or [])}
        self.formatter = None

    def measure(self, backbone: Backbone, device: torch.device) -> dict:
        was_training = backbone.training
        backbone.eval()
        window = _window(backbone, self.cfg)
        row = {"perplexity": perplexity(backbone, self.texts, window, self.cfg.max_tokens, device) if self.texts else None,
               "qa_accuracy": qa_accuracy(backbone, self.items, window, device) if self.items else None,
               "boolq_accuracy": boolq_accuracy(backbone, self.boolq, window, device) if self.boolq else None,
               "gsm8k_accuracy": None, "held_out_nll": None, "held_out_score": None}
        if self.gsm8k:
            row["gsm8k_accuracy"] = self._generated(backbone, self.gsm8k, "number", self.cfg.max_new_tokens, window, device)
        if self.held_out:
            task = self.held_out_task
            row["held_out_nll"] = self._response_nll(backbone, self.held_out, window, device)
            row["held_out_score"] = self._generated(backbone, self.held_out, task.metric, task.max_new_tokens, window, device)
        backbone.train(was_training)
        if self.general:
            row |= self.general.measure(backbone, device)
            self.chance |= self.general.chance
            self.counts |= self.general.counts
        return row

    def record(self, rows: list[dict]) -> dict:
        """results.json's ``retention`` from the rows ``measure`` gave."""
        return retention_record(self.cfg, rows, self.chance, self.counts, self.general.probes if self.general else None)

    def _format(self, backbone: Backbone, window: int):
        from ..models.formatting import Formatter

        if self.formatter is None:
            self.formatter = Formatter(backbone.tokenizer, self.cfg.template, window, key="eval.retention.template")
        return self.formatter

    def _generated(self, backbone: Backbone, examples, metric: str, max_new: int, window: int,
                   device: torch.device) -> float:
        from ..models.formatting import prompt_budget
        from .generation import decode_text, greedy_decode
        from .scoring import score

        fmt = self._format(backbone, window)
        budget = prompt_budget(window, max_new, max_positions(backbone.model), key="eval.retention.max_new_tokens")
        prompts = [fmt.prompt_ids(ex, budget) for ex in examples]
        outs = greedy_decode(backbone, prompts, max_new, device=device, eos_ids=fmt.eos_ids)
        return sum(score(ex.metric or metric, decode_text(backbone, ids), ex.response, ex.options)
                   for ex, ids in zip(examples, outs)) / len(examples)

    def _response_nll(self, backbone: Backbone, examples, window: int, device: torch.device) -> float:
        """Mean NLL per response token (the template's, as trained), the prompt given."""
        fmt = self._format(backbone, window)
        encoded = [fmt.example(ex) for ex in examples]
        total, count = 0.0, 0
        for start in range(0, len(encoded), 8):
            part = encoded[start: start + 8]
            ids, mask = pad([e.input_ids for e in part], backbone.pad_id)
            labels, _ = pad([e.labels for e in part], IGNORE_INDEX)
            nll, scored = token_nll(backbone.lm_logits(ids.to(device), mask.to(device)), labels.to(device))
            total, count = total + nll.sum().item(), count + int(scored.sum())
        return total / count
