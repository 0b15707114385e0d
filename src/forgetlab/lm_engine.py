"""A language-modelling run: a causal LM fine-tuned with the next-token loss on one corpus after
another, evaluated after each task on every task's held-out text.

A task's text is tokenized by the backbone's tokenizer, cut to ``data.max_train_tokens`` (held-out
text: ``data.max_eval_tokens``) tokens and into consecutive windows of ``backbone.max_length``
tokens. A window is one training example and predicts its tokens 2..n; windows do not overlap, so
a window's first tokens see little context. Evaluation gives N[i][j], the mean NLL (nats per
predicted token) on task j's held-out windows after training through task i, the perplexity
P[i][j] = exp(N[i][j]), the next-token top-1 accuracy (results.json's ``accuracy_matrix``), and the
same three before any training (the baseline rows).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .config import Config
from .data.lm_stream import build_lm_stream
from .data.stream import Task
from .engine import Engine, console
from .errors import UserError
from .eval.metrics import all_metrics, lower_is_better_metrics, metric_direction
from .eval.next_token import next_token_scores
from .eval.retention import Retention, retention_record
from .methods import REGISTRY, method_class
from .methods.base import Context
from .models.backbones import Backbone, build_backbone
from .models.lm_learner import LMLearner
from .runtime import pick_device, seed_everything
from .train.batching import Inputs

CLASSIFICATION_EVAL = ("probe", "probe_layers", "cka")     # eval keys that need classes or a head


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


class LMEngine(Engine):
    """The engine's run (outputs, store, resume, failure handling, trackers) around a language-modelling stream."""

    def __init__(self, cfg: Config):
        method_cls = method_class(cfg.method["name"])
        if not method_cls.language_modeling:
            usable = sorted(name for name, cls in REGISTRY.items() if cls.language_modeling)
            raise UserError(f"method.name: {method_cls.name} needs a classification stream; on a language_modeling "
                            f"stream use one of {', '.join(usable)}")
        for key in CLASSIFICATION_EVAL:
            if getattr(cfg.eval, key):
                raise UserError(f"eval.{key}: not available on a language_modeling stream (no classes, no head)")
        self.cfg = cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = pick_device(cfg.train.device)
        seed_everything(cfg.seed)
        self.stream = build_lm_stream(cfg.data, cfg.seed)
        backbone = build_backbone(cfg.backbone)
        if not backbone.causal:
            raise UserError(f"backbone: a language_modeling stream needs a causal LM; {backbone.source} is an encoder "
                            "(use backbone.arch: gpt2 or a causal LM)")
        self.learner = LMLearner(backbone, self.stream)
        self.retention = Retention(cfg.eval.retention) if cfg.eval.retention else None
        self.ctx = Context(self.stream, self.inputs, self.device, backbone.pad_id, cfg.train, cfg.seed)
        self.method = method_cls(method_cls.Config.model_validate(cfg.method), self.learner, self.ctx)
        self.learner.to(self.device)          # after the method: it may add modules (LoRA, adapters)
        self._windows: dict[tuple[int, str], list[list[int]]] = {}
        for task in self.stream.tasks:        # tokenize now (after the method: prompt tuning shortens windows)
            for split in ("train", "test"):
                self.inputs(task, split)

    def inputs(self, task: Task, split: str) -> Inputs:
        """A task's token windows ("train": its training text, "test": its held-out text); no classes, every label 0."""
        key = (task.index, split)
        if key not in self._windows:
            train = split == "train"
            texts = task.train_texts if train else task.test_texts
            budget = self.cfg.data.max_train_tokens if train else self.cfg.data.max_eval_tokens
            self._windows[key] = token_windows(self.learner.backbone, texts, budget)
            if not self._windows[key]:
                raise UserError(f"data: task {task.index} ('{task.name}') has fewer than 2 "
                                f"{'training' if train else 'held-out'} tokens")
        tokens = self._windows[key]
        n = len(tokens)
        return Inputs(torch.zeros(n, dtype=torch.long), torch.full((n,), task.index), torch.arange(n), tokens=tokens)

    def scores(self) -> dict[str, list[float]]:
        """Mean next-token NLL and top-1 accuracy on every task's held-out windows."""
        rows: dict[str, list[float]] = {"nll": [], "accuracy": []}
        for task in self.stream.tasks:
            self.method.eval_task(task)
            nll, accuracy = next_token_scores(self.learner, self.ctx.batches(self.inputs(task, "test"),
                                                                             self.cfg.train.batch_size))
            rows["nll"].append(nll)
            rows["accuracy"].append(accuracy)
        return rows

    def general_ability(self) -> dict:
        """Perplexity on the general corpus and zero-shot accuracy of ``eval.retention``, now."""
        return self.retention.measure(self.learner.backbone, self.device)

    def _run_tasks(self, state: dict, ckpt_dir: Path, out_dir: Path) -> dict:
        cfg, stream, learner, method = self.cfg, self.stream, self.learner, self.method
        T = len(stream.tasks)
        t_start, elapsed_before = time.perf_counter(), state.get("total_s", 0.0)
        if state["baseline"] is None:
            t0 = time.perf_counter()
            state["baseline"] = self.scores()
            state["retention"] = [self.general_ability()] if self.retention else []
            state["eval_s"] += time.perf_counter() - t0
        for task in stream.tasks[state["completed"]:]:
            seed_everything(cfg.seed * 1_000_003 + task.index)
            learner.begin_task(task)
            method.before_task(task)
            stats = self._train(task)
            t0 = time.perf_counter()
            row = self.scores()
            if self.retention:
                state["retention"].append(self.general_ability())
            eval_s = time.perf_counter() - t0
            state["rows"].append(row)
            state["train_s"] += stats.seconds
            state["eval_s"] += eval_s
            state["completed"] = task.index + 1
            state["log"].append({"task": task.name, "steps": stats.steps, "examples": stats.examples,
                                 "loss": stats.loss, "train_s": stats.seconds, "eval_s": eval_s})
            console.print(f"task {task.index + 1:>2}/{T} {task.name:<14} {stats.steps:>5} steps  "
                          f"loss {stats.loss:.4f}  train {stats.seconds:6.1f}s  eval {eval_s:5.1f}s  "
                          f"ppl(this task) {math.exp(row['nll'][task.index]):.2f}")
            self._notify("task", task.index + 1, [t.name for t in stream.tasks], row["accuracy"], stats.loss)
            state["total_s"] = elapsed_before + time.perf_counter() - t_start
            checkpoint.save(ckpt_dir, task.index, learner, method, state, backbone_changed=True)
        timing = {"train_s": state["train_s"], "eval_s": state["eval_s"],
                  "total_s": elapsed_before + time.perf_counter() - t_start}
        return self._results(state, timing)

    def _results(self, state: dict, timing: dict) -> dict:
        """results.json: the classification contract with next-token accuracy as R, plus the
        perplexity and NLL matrices, their baseline rows, their metrics and each metric's direction."""
        stream, baseline = self.stream, state["baseline"]
        N = np.array([row["nll"] for row in state["rows"]])
        R = np.array([row["accuracy"] for row in state["rows"]])
        P, b_ppl = np.exp(N), np.exp(baseline["nll"])
        metrics = {**all_metrics(R, baseline["accuracy"]),
                   **lower_is_better_metrics(P, b_ppl, "ppl"),
                   **lower_is_better_metrics(N, baseline["nll"], "nll")}
        return {
            **self._results_head(state),
            "accuracy_matrix": R.tolist(),
            "probe_matrix": None,
            "baseline_accuracy": baseline["accuracy"],
            "perplexity_matrix": P.tolist(),
            "baseline_perplexity": b_ppl.tolist(),
            "nll_matrix": N.tolist(),
            "baseline_nll": baseline["nll"],
            "tokens": {"window": self.learner.backbone.max_length,
                       "train": [sum(map(len, self._windows[(t.index, "train")])) for t in stream.tasks],
                       "eval": [sum(len(w) - 1 for w in self._windows[(t.index, "test")]) for t in stream.tasks]},
            "metrics": metrics,
            "metric_directions": {key: metric_direction(key) for key in metrics},
            "retention": retention_record(self.cfg.eval.retention, state["retention"]) if self.retention else None,
            "diagnostics": None,
            **self._results_tail(state, timing),
        }

