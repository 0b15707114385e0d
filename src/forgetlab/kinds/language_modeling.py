"""Language modelling: a causal LM fine-tuned with the next-token loss on one corpus after another.

A task's text is tokenized by the backbone's tokenizer, cut to ``data.max_train_tokens`` (held-out
text: ``data.max_eval_tokens``) tokens and into consecutive windows of ``backbone.max_length``
tokens. A window is one example and predicts its tokens 2..n; windows do not overlap, so a window's
first tokens see little context. Evaluation gives N[i][j], the mean NLL (nats per predicted token)
on task j's held-out windows after training through task i, the perplexity P[i][j] = exp(N[i][j]),
and the next-token top-1 accuracy, each with its baseline row before any training.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import ConfigDict, Field

from .. import distributed
from ..config import DataConfig, HeadConfig
from ..data.lm_stream import build_lm_stream
from ..data.stream import Task
from ..errors import UserError
from ..models.backbones import Backbone
from ..models.causal_lm import token_nll
from ..models.learner import Learner, Output
from ..train.batching import Inputs
from .base import Kind, Rows

CLASSIFICATION_EVAL = ("probe", "probe_layers", "cka")     # eval keys that need classes or a head


class LanguageModelingData(DataConfig):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    scenario: Literal["language_modeling"] = "language_modeling"
    max_train_tokens: int | None = Field(None, ge=2)   # training tokens per task (None: all)
    max_eval_tokens: int | None = Field(8192, ge=2)    # held-out tokens per task (None: all)
    valid_fraction: float = Field(0.05, gt=0, lt=1)    # a text's (or book's) tail held out


class LanguageModel(Learner):
    """A causal LM's next-token predictions: logits [B, L-1, V] and the next tokens as targets."""

    def forward(self, batch: dict) -> Output:
        logits = self.backbone.lm_logits(batch["input_ids"], batch["attention_mask"])
        return Output(logits[:, :-1], None, batch["targets"][:, 1:])


class LanguageModeling(Kind):
    name = "language_modeling"
    scenarios = ("language_modeling",)
    Data = LanguageModelingData
    matrices = {"accuracy": ("acc", "higher"), "perplexity": ("ppl", "lower"), "nll": ("nll", "lower")}

    def __init__(self, cfg, device):
        for key in CLASSIFICATION_EVAL:
            if getattr(cfg.eval, key):
                raise UserError(f"eval.{key}: not available on a language_modeling stream (no classes, no head)")
        super().__init__(cfg, device)
        self._windows: dict[tuple[int, str], list[list[int]]] = {}

    def build_stream(self):
        return build_lm_stream(self.cfg.data, self.cfg.seed)

    def build_learner(self, backbone: Backbone, head: HeadConfig) -> LanguageModel:
        if not backbone.causal:
            raise UserError(f"backbone: a language_modeling stream needs a causal LM; {backbone.source} is an encoder "
                            "(use backbone.arch: gpt2 or a causal LM)")
        self.learner = LanguageModel(backbone)
        return self.learner

    def inputs(self, task: Task, split: str) -> Inputs:
        """A task's token windows ("train": its training text, "test": its held-out text), each its own target."""
        key = (task.index, split)
        if key not in self._windows:
            train = split == "train"
            budget = self.cfg.data.max_train_tokens if train else self.cfg.data.max_eval_tokens
            self._windows[key] = token_windows(self.learner.backbone, task.train_texts if train else task.test_texts, budget)
            if not self._windows[key]:
                raise UserError(f"data: task {task.index} ('{task.name}') has fewer than 2 "
                                f"{'training' if train else 'held-out'} tokens")
        windows = self._windows[key]
        n = len(windows)
        return Inputs(torch.zeros(n, dtype=torch.long), torch.full((n,), task.index), torch.arange(n),
                      tokens=windows, targets=windows)

    def start(self, method, folder) -> None:
        for task in self.stream.tasks:        # tokenize now, so a task too short fails before training
            for split in ("train", "test"):
                self.inputs(task, split)

    @torch.inference_mode()
    def evaluate(self, method, seen: int, record: bool = True) -> Rows:
        """Mean next-token NLL, its perplexity and top-1 accuracy on every task's held-out windows (over
        several processes, each rank takes its share of the windows and the sums are added up)."""
        self.learner.eval()
        ranks = distributed.current()
        nll_row, accuracy_row = [], []
        for task in self.stream.tasks:
            method.eval_task(task)
            nll, right, count = 0.0, 0, 0
            windows = self.inputs(task, "test")
            mine = windows.subset(torch.arange(len(windows))[ranks.rank::ranks.world])
            for batch in method.ctx.batches(mine, self.cfg.train.batch_size):
                logits = self.learner.backbone.lm_logits(batch["input_ids"], batch["attention_mask"])
                token_loss, scored = token_nll(logits, batch["targets"])
                nll += token_loss.sum().item()
                right += int(((logits[:, :-1].argmax(-1) == batch["targets"][:, 1:]) & scored).sum())
                count += int(scored.sum())
            nll, right, count = ranks.sum([nll, right, count])
            nll_row.append(nll / count)
            accuracy_row.append(right / count)
        return {"accuracy": accuracy_row, "perplexity": [math.exp(x) for x in nll_row], "nll": nll_row}

    def results(self, matrices: dict[str, dict]) -> dict:
        tasks = self.stream.tasks
        return {"tokens": {"window": self.learner.backbone.max_length,
                           "train": [sum(map(len, self._windows[(t.index, "train")])) for t in tasks],
                           "eval": [sum(len(w) - 1 for w in self._windows[(t.index, "test")]) for t in tasks]}}


def token_windows(backbone: Backbone, texts: list[str], max_tokens: int | None) -> list[list[int]]:
    """The texts joined by newlines as token ids (less the special tokens the tokenizer puts first),
    the first ``max_tokens`` of them (all if None), cut into consecutive windows of
    ``backbone.max_length`` tokens; a shorter last window is kept if it predicts a token."""
    text = "\n".join(texts)
    prefix = len(backbone.tokenize([""])[0])
    # all: no tokenizer gives more than a token a byte, plus a leading space marker
    limit = max_tokens if max_tokens is not None else len(text.encode("utf-8")) + 1
    ids = backbone.tokenize([text], max_length=limit + prefix)[0][prefix:][:limit]
    size = backbone.max_length
    return [w for w in (ids[i: i + size] for i in range(0, len(ids), size)) if len(w) > 1]
