"""Generative replay for causal LMs: "LAMOL: LAnguage MOdeling for Lifelong Language Learning"
(Sun et al., ICLR 2020).

The backbone also learns, as a language model, to write examples of each task after a task
prompt: ``prompt(task) text <eos>``, weighted by ``lm_weight`` (LAMOL: 0.25). Before a new task it
samples ``ratio`` (LAMOL: 0.2) times the new task's size of pseudo-examples of the old tasks
(top-k sampling, split evenly among them), labels each with the current classifier restricted to
its task's classes (as deep generative replay labels with the old solver, Shin et al., 2017),
and trains on them with the new data. The LM head is the model's output layer.

On an instruction stream the model is an instruction follower and there is no classifier to label
with: the pseudo-examples of each old task are written by the model from the task's instruction, and
answered by it (``components/pseudo_instructions.py``), with no language-modelling loss added.
"""
from __future__ import annotations

import torch
from pydantic import Field

from ..errors import UserError
from ..models.causal_lm import IGNORE_INDEX, lm_labels, token_nll
from ..models.peft import max_positions
from ..models.learner import Classifier
from ..train.batching import Inputs, pad
from .base import Method, MethodConfig
from .components.pseudo_instructions import PseudoInstructions


class GenerativeReplayConfig(MethodConfig):
    lm_weight: float = Field(0.25, ge=0)       # lambda: weight of the language-modelling loss
    ratio: float = Field(0.2, ge=0)            # gamma: pseudo-examples per new example
    top_k: int = Field(20, ge=1)
    temperature: float = Field(1.0, gt=0)


class GenerativeReplay(Method):
    name = "generative_replay"
    not_distributed = "samples its pseudo-examples per rank"
    kinds = frozenset({"classification", "instruction"})
    Config = GenerativeReplayConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        backbone = learner.backbone
        if not backbone.causal:
            raise UserError(f"method.name: generative_replay needs a causal LM backbone; {backbone.source} is an "
                            "encoder (use backbone.arch: gpt2 or a causal LM)")
        self.special_prefix = backbone.tokenize([""])[0]        # what the tokenizer puts before any text
        self.prompts = [backbone.tokenize([f"__{t.name}__"])[0] for t in ctx.stream.tasks]
        self.eos = backbone.tokenizer.eos_token_id
        self.unsampled = sorted({*self.special_prefix, ctx.pad_id} - {self.eos})     # never written in a text
        self.positions = max_positions(backbone.model) or 1_000_000      # the model's longest sequence
        self.pseudo: Inputs | None = None
        self.writer = None if isinstance(learner, Classifier) else PseudoInstructions(
            ctx.kind, learner, ctx.device, cfg.top_k, cfg.temperature, ctx.seed)

    # -- the language model ------------------------------------------------------------------
    def lm_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.learner.backbone.lm_logits(ids, mask)

    def lm_loss(self, batch: dict) -> torch.Tensor:
        """Next-token loss on ``prompt text <eos>``, over the text and the end token."""
        lengths = batch["attention_mask"].sum(1).tolist()
        seqs, starts = [], []
        for row, n, t in zip(batch["input_ids"].tolist(), lengths, batch["task_ids"].tolist()):
            body = row[len(self.special_prefix): n][: self.positions - len(self.prompts[t]) - 1]
            seqs.append(self.prompts[t] + body + [self.eos])
            starts.append(len(self.prompts[t]))
        ids, mask = pad(seqs, self.ctx.pad_id)
        ids, mask = ids.to(self.ctx.device), mask.to(self.ctx.device)
        labels = lm_labels(ids, mask)
        for i, s in enumerate(starts):
            labels[i, :s] = IGNORE_INDEX
        nll, predicted = token_nll(self.lm_logits(ids, mask), labels)
        return nll.sum() / predicted.sum()

    def loss(self, batch, out):
        if self.writer is not None:
            return super().loss(batch, out)
        return super().loss(batch, out) + self.cfg.lm_weight * self.lm_loss(batch)

    @torch.no_grad()
    def generate(self, task_index: int, n: int) -> list[list[int]]:
        """``n`` token sequences (as the tokenizer would give them) sampled after the task's prompt."""
        prompt = self.prompts[task_index]
        budget = min(self.learner.backbone.max_length - len(self.special_prefix), self.positions - len(prompt))
        ids = torch.tensor([prompt] * n, device=self.ctx.device)
        done = torch.zeros(n, dtype=torch.bool, device=self.ctx.device)
        for _ in range(budget):
            logits = self.lm_logits(ids, torch.ones_like(ids))[:, -1] / self.cfg.temperature
            logits[:, self.unsampled] = float("-inf")
            top = logits.topk(min(self.cfg.top_k, logits.size(-1)))
            pick = top.indices.gather(1, torch.multinomial(top.values.softmax(-1), 1))
            pick[done] = self.eos
            ids = torch.cat([ids, pick], 1)
            done |= pick.squeeze(1) == self.eos
            if done.all():
                break
        out = []
        for row in ids[:, len(prompt):].tolist():
            body = row[: row.index(self.eos)] if self.eos in row else row
            out.append(self.special_prefix + body[:budget])
        return out

    def pseudo_examples(self, task) -> Inputs | None:
        """Pseudo-examples of every task before ``task``, labelled by the current classifier (on an
        instruction stream: written and answered by the model from each task's instruction)."""
        old = self.ctx.stream.tasks[: task.index]
        total = round(self.cfg.ratio * len(task.train_labels))
        if not old or total == 0:
            return None
        if self.writer is not None:
            parts = [self.writer.inputs(t, total // len(old) + (1 if k < total % len(old) else 0))
                     for k, t in enumerate(old)]
            parts = [p for p in parts if p is not None]
            return Inputs.concat(parts) if parts else None
        was_training = self.learner.training
        self.learner.eval()
        parts = []
        for k, t in enumerate(old):
            n = total // len(old) + (1 if k < total % len(old) else 0)
            if n == 0:
                continue
            tokens = self.generate(t.index, n)
            task_ids = torch.full((n,), t.index, dtype=torch.long)
            inputs = Inputs(torch.zeros(n, dtype=torch.long), task_ids, torch.full((n,), -1), tokens=tokens)
            with torch.no_grad():
                scores = self.learner.head(self.learner.encode(self.ctx.batch(inputs)))[:, t.classes]
            inputs.labels = torch.tensor(t.classes)[scores.argmax(-1).cpu()]
            parts.append(inputs)
        self.learner.train(was_training)
        return Inputs.concat(parts) if parts else None

    def training_inputs(self, task, seen):
        self.pseudo = self.pseudo_examples(task)
        own = self.ctx.inputs(task, "train")
        return own if self.pseudo is None else Inputs.concat([own, self.pseudo])
