"""Instruction tuning: a causal LM fine-tuned on prompt -> response tasks, one after another.

Examples are rendered with the tokenizer's chat template (or a plain one, ``data.template``) and
trained with the loss on response tokens only (``models/formatting.py``). After each task every task's
test examples are answered twice:

- ``generated``: greedy decoding (batched, KV cache, stops at end of turn or ``max_new_tokens``),
  the answer scored by the task's metric (exact match, accuracy on a closed answer set, ROUGE-L, the
  final number; ``eval/scoring.py``);
- ``likelihood``: the option with the highest log-likelihood (closed answer sets), or for free answers
  the reference's per-token probability exp(mean log p).

A model that still ranks the right option first but no longer writes it has lost the format, not the
knowledge; the two matrices side by side tell one from the other. The first ``data.keep_predictions``
answers of every task after every task are kept for the report.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal

import torch
from pydantic import ConfigDict, Field

from ..config import DataConfig, HeadConfig
from ..models.formatting import Formatter, prompt_budget
from ..data.instructions import InstructionTask, build_instruction_stream
from ..errors import UserError
from ..eval.generation import decode_text, greedy_decode
from ..eval.likelihood import continuation_logprobs
from ..eval.scoring import match_option, score
from ..models.backbones import Backbone
from ..models.causal_lm import IGNORE_INDEX
from ..models.learner import Learner, Output
from ..models.peft import max_positions
from ..train.batching import Inputs
from .base import Kind, Rows

CLASSIFICATION_EVAL = ("probe", "probe_layers", "cka")


class InstructionData(DataConfig):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    scenario: Literal["instruction"] = "instruction"
    order_seed: int | None = None                       # None: the benchmark's (or sequence's) order
    benchmark_order: int = Field(1, ge=1)               # data.name: standard (orders 1-3) or five (1-4)
    max_train_per_task: int | None = Field(None, ge=1)  # a seeded sample of each task's training set
    max_test_per_task: int | None = Field(100, ge=1)
    template: str = "auto"                              # auto, chat, plain, or a format string with {prompt}
    system: str | None = None                           # a system prompt for every example that has none
    metric: Literal["exact_match", "accuracy", "rouge_l", "number"] | None = None   # local files (None: by their options)
    max_new_tokens: int | None = Field(None, ge=1)      # None: each task's own (8 for labels, 256 for GSM8K)
    stop: list[str] = []                                # an answer also ends at these strings (cut before them)
    likelihood: bool = True                             # also score by likelihood (the second matrix)
    keep_predictions: int = Field(3, ge=0)              # answers kept per task per evaluation


class ResponseModel(Learner):
    """A causal LM's predictions of the response tokens: logits [N, V] at the N positions whose next
    token takes a loss, and those tokens as targets (the output layer runs on those positions only)."""

    def forward(self, batch: dict) -> Output:
        hidden = self.backbone.hidden_states(batch["input_ids"], batch["attention_mask"], batch.get("position_ids"))
        targets = batch["targets"][:, 1:]
        scored = targets != IGNORE_INDEX
        return Output(self.backbone.lm_head(hidden[:, :-1][scored]), None, targets[scored])


class InstructionTuning(Kind):
    name = "instruction"
    scenarios = ("instruction",)
    Data = InstructionData
    matrices = {"generated": ("score", "higher"), "likelihood": ("likelihood", "higher")}
    packs = True

    def __init__(self, cfg, device):
        for key in CLASSIFICATION_EVAL:
            if getattr(cfg.eval, key):
                raise UserError(f"eval.{key}: not available on an instruction stream (no classes, no head)")
        super().__init__(cfg, device)
        self._encoded: dict[tuple[int, str], Inputs] = {}
        self._prompts: dict[int, list[list[int]]] = {}

    def build_stream(self):
        stream = build_instruction_stream(self.cfg.data, self.cfg.seed)
        for task in stream.tasks:
            for ex in task.train_examples + task.test_examples:
                if (ex.metric or task.metric) == "accuracy" and not ex.options:
                    raise UserError(f"data.metric: accuracy needs 'options' on every example; task '{task.name}' "
                                    f"has one without ({ex.prompt[:40]!r}...)")
        return stream

    def build_learner(self, backbone: Backbone, head: HeadConfig) -> ResponseModel:
        if not backbone.causal:
            raise UserError(f"backbone: an instruction stream needs a causal LM; {backbone.source} is an encoder "
                            "(use backbone.arch: gpt2 or a causal LM)")
        self.formatter = Formatter(backbone.tokenizer, self.cfg.data.template, backbone.max_length, self.cfg.data.system)
        self.learner = ResponseModel(backbone)
        return self.learner

    # -- inputs ------------------------------------------------------------------------------
    def inputs(self, task: InstructionTask, split: str) -> Inputs:
        """A task's examples as prompt + response ids, targets -100 on the prompt."""
        key = (task.index, split)
        if key not in self._encoded:
            examples = task.train_examples if split == "train" else task.test_examples
            encoded = [self.formatter.example(ex) for ex in examples]
            n = len(encoded)
            self._encoded[key] = Inputs(torch.zeros(n, dtype=torch.long), torch.full((n,), task.index), torch.arange(n),
                                        tokens=[e.input_ids for e in encoded], targets=[e.labels for e in encoded])
        return self._encoded[key]

    def prompts(self, task: InstructionTask) -> list[list[int]]:
        """The test prompts as the model answers them, cut to leave room for ``max_new_tokens``."""
        if task.index not in self._prompts:
            self._prompts[task.index] = [self.formatter.prompt_ids(ex, self.budget(task)) for ex in task.test_examples]
        return self._prompts[task.index]

    def budget(self, task: InstructionTask) -> int:
        backbone = self.learner.backbone
        return prompt_budget(backbone.max_length, task.max_new_tokens, max_positions(backbone.model))

    def with_demonstrations(self, example, demos: list[str], assemble, budget: int) -> list[int]:
        """The prompt ids with as many of its demonstrations (nearest first) as fit the budget whole; the
        question itself is cut from the left only when none fits."""
        for keep in range(len(demos), 0, -1):
            ids = self.formatter.prompt_ids(replace(example, prompt=assemble(demos[:keep], example.prompt)), 10**9)
            if len(ids) <= budget:
                return ids
        return self.formatter.prompt_ids(example, budget)

    def start(self, method, folder) -> None:
        for task in self.stream.tasks:          # tokenize now: a task that cannot be encoded fails before training
            self.inputs(task, "train")
            self.prompts(task)
        self.state.setdefault("predictions", [])
        self.state.setdefault("unmatched", [])

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, method, seen: int, record: bool = True) -> Rows:
        generated, likelihood, unmatched, kept = [], [], [], {}
        for task in self.stream.tasks:
            method.eval_task(task)
            demonstrations = method.demonstrations(task, task.test_examples)
            budget = self.budget(task)
            prompts = self.prompts(task) if demonstrations is None else [
                self.with_demonstrations(ex, demos, method.assemble, budget)
                for ex, demos in zip(task.test_examples, demonstrations)]
            answers = self.answer(task, prompts)
            scores = [self.score(task, ex, text) for ex, text in zip(task.test_examples, answers)]
            generated.append(sum(scores) / len(scores))
            closed = [(ex, text) for ex, text in zip(task.test_examples, answers) if ex.options]
            unmatched.append(sum(match_option(t, ex.options) is None for ex, t in closed) / len(closed) if closed else None)
            if self.cfg.data.likelihood:
                likelihood.append(self.likelihood_score(task, prompts))
            kept[task.name] = [{"prompt": ex.prompt[-300:], "reference": ex.response, "prediction": text, "score": s}
                               | ({"demonstrations": [d[:200] for d in demonstrations[i]]} if demonstrations is not None else {})
                               for i, (ex, text, s) in enumerate(zip(task.test_examples, answers, scores))
                               if i < self.cfg.data.keep_predictions]
        if record:
            self.state["predictions"].append(kept)
            self.state["unmatched"].append(unmatched)
        return {"generated": generated, "likelihood": likelihood if self.cfg.data.likelihood else None}

    def answer(self, task: InstructionTask, prompts: list[list[int]]) -> list[str]:
        """Greedy answers to the task's test prompts (``prompts``' ids), each ending at an end of turn, a
        stop string or ``max_new_tokens``."""
        backbone = self.learner.backbone
        stop = self.cfg.data.stop
        outs = greedy_decode(backbone, prompts, task.max_new_tokens, device=self.device,
                             batch_size=self.cfg.train.eval_batch_size, eos_ids=self.formatter.eos_ids, stop_strings=stop)
        return [decode_text(backbone, ids, stop) for ids in outs]

    @staticmethod
    def score(task: InstructionTask, example, text: str) -> float:
        return score(example.metric or task.metric, text, example.response, example.options)

    def likelihood_score(self, task: InstructionTask, prompts: list[list[int]]) -> float:
        """Accuracy of the most likely option (closed answer sets) or the reference's mean per-token
        probability (free answers), averaged over the task's test examples."""
        fmt, examples = self.formatter, task.test_examples
        continuations = [[fmt.continuation(o) for o in ex.options] if ex.options else [fmt.continuation(ex.response)]
                         for ex in examples]
        logprobs = continuation_logprobs(self.learner.backbone, prompts, continuations, self.device)
        values = []
        for ex, lp, conts in zip(examples, logprobs, continuations):
            if ex.options:
                best = max(range(len(lp)), key=lp.__getitem__)
                values.append(float(ex.options[best].strip() == ex.response.strip()))
            else:
                values.append(math.exp(lp[0] / len(conts[0])))
        return sum(values) / len(values)

    def results(self, matrices: dict[str, dict]) -> dict:
        tasks = self.stream.tasks
        return {"instruction": {"template": "chat" if self.formatter.chat else (self.formatter.format or ""),
                                "metrics": {t.name: t.metric for t in tasks},
                                "max_new_tokens": {t.name: t.max_new_tokens for t in tasks},
                                "examples": {t.name: [len(t.train_examples), len(t.test_examples)] for t in tasks}},
                "predictions": self.state["predictions"],
                "unmatched": self.state["unmatched"]}

