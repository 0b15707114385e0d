"""Self-Synthesized Rehearsal: "Mitigating Catastrophic Forgetting in Large Language Models with
Self-Synthesized Rehearsal" (Huang et al., ACL 2024).

No real example of an old task is trained on again. After a task is trained, ``demonstrations`` of its
training examples are drawn (seeded) and kept, as text, for in-context learning only. Before each
later task, for every old task:

1. the base model (a frozen copy of the backbone made before the stream) is shown the demonstrations'
   inputs in a plain few-shot prompt and writes new inputs (sampled: top-k at a temperature; at most
   twice the longest demonstration's tokens, and half the window; a prompt too long loses its start);
2. the current model answers each synthetic input greedily through the run's template (on a closed
   answer set the option its answer names; an empty answer, or one naming no option, is dropped);
3. the synthetic examples (``ratio`` times the old task's training-set size, or ``per_task``) join the new
   task's training set.

Here every prompt of a task shares one instruction (the question of a converted data set), so the base
model is asked for the input only, and the instruction the demonstrations share
(``components/pseudo_instructions.shared_instruction``) is joined to it as the task's prompts have it;
the paper asks the base model for instruction and input together. The paper also writes more
candidates than it keeps and selects a diverse subset by clustering; this writes the count it keeps
and selects nothing.

The demonstrations are kept in ``state()`` (their prompts' UTF-8 bytes), so resume uses the same ones.
"""
from __future__ import annotations

import copy

import torch
from pydantic import Field

from ..data.instructions import Instruction
from ..eval.generation import Sampling, decode_text, greedy_decode
from ..models.peft import max_positions
from ..train.batching import Inputs
from .base import Method, MethodConfig
from .components.pseudo_instructions import (
    PseudoInstructions,
    join_instruction,
    shared_instruction,
)

FEW_SHOT = "Here are inputs of one task, one after another.\n\n{listed}Input {next}:\n"
STOP = "\n\nInput"          # the base model starts the next input: its own ends there
PREFIX = "ssr.demo."        # state keys: ssr.demo.<task>.<j>


class SSRConfig(MethodConfig):
    demonstrations: int = Field(2, ge=2)          # kept per task, shown in-context (2: to find their shared instruction)
    ratio: float = Field(0.1, ge=0)               # synthetic examples per training example of the old task
    per_task: int | None = Field(None, ge=1)      # instead: this many per old task
    top_k: int = Field(20, ge=1)
    temperature: float = Field(1.0, gt=0)


class SSR(Method):
    name = "ssr"
    not_distributed = "samples its synthetic instances per rank"
    kinds = frozenset({"instruction"})
    Config = SSRConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.base = copy.deepcopy(learner.backbone).requires_grad_(False).eval()     # the weights before the stream
        self.answerer = PseudoInstructions(ctx.kind, learner, ctx.device, cfg.top_k, cfg.temperature, ctx.seed)
        self.demos: dict[int, list[str]] = {}          # task index -> the kept demonstrations' prompts
        self.synthetic: Inputs | None = None           # what joined the last task's training set
        self.counts: dict[str, dict[str, int]] = {}    # old task -> synthetic examples made and dropped

    def after_task(self, task):
        super().after_task(task)
        generator = torch.Generator().manual_seed(self.ctx.seed * 1_000_003 + task.index)
        order = torch.randperm(len(task.train_examples), generator=generator)
        self.demos[task.index] = [task.train_examples[i].prompt for i in order[: self.cfg.demonstrations].tolist()]

    # -- synthesis ------------------------------------------------------------------------------
    def write_inputs(self, old, n: int, target: int) -> list[str]:
        """Up to ``n`` new prompts of task ``old`` written by the base model from its demonstrations (an
        empty input is dropped); ``target``, the task they are written for, seeds the sampling."""
        fmt, window = self.ctx.kind.formatter, self.base.max_length
        instruction, side = shared_instruction(self.demos[old.index])
        cut = len(instruction)
        inputs = [p[:-cut] if side == "suffix" else p[cut:] if side == "prefix" else p for p in self.demos[old.index]]
        listed = "".join(f"Input {i}:\n{text.strip()}\n\n" for i, text in enumerate(inputs, 1))
        new_tokens = min(window // 2, 2 * max(len(fmt.encode(t)) for t in inputs) + 1)   # about a demonstration's length
        budget = max(1, min(window, max_positions(self.base.model) or window) - new_tokens - len(fmt.start))
        ids = fmt.start + fmt.encode(FEW_SHOT.format(listed=listed, next=len(inputs) + 1))[-budget:]
        sampling = Sampling(self.cfg.temperature, self.cfg.top_k,
                            torch.Generator().manual_seed(self.ctx.seed * 1_000_003 + target * 1_000 + old.index))
        self.base.to(self.ctx.device)
        written = greedy_decode(self.base, [ids] * n, new_tokens, device=self.ctx.device, stop_strings=(STOP,),
                                eos_ids=fmt.eos_ids, sampling=sampling)
        texts = [decode_text(self.base, out, (STOP,)) for out in written]
        return [join_instruction(t, instruction, side) for t in texts if t]

    def synthesize(self, old, target: int) -> list[Instruction]:
        """Synthetic examples of task ``old``: inputs by the base model, outputs by the current one."""
        n = self.cfg.per_task or round(self.cfg.ratio * len(old.train_examples))
        examples, _ = self.answerer.answered(old, self.write_inputs(old, n, target) if n else [])
        self.counts[old.name] = {"made": len(examples), "dropped": n - len(examples)}
        return examples

    def training_inputs(self, task, seen):
        self.counts = {}
        parts = [self.answerer.as_inputs(old, self.synthesize(old, task.index)) for old in seen[:-1]]
        parts = [p for p in parts if p is not None]
        self.synthetic = Inputs.concat(parts) if parts else None
        own = self.ctx.inputs(task, "train")
        return own if self.synthetic is None else Inputs.concat([own, self.synthetic])

    def task_summary(self, task):
        """Per old task: the synthetic examples made, and those dropped (an empty input or answer, or an
        answer naming no option)."""
        return super().task_summary(task) | ({"synthetic": self.counts} if self.counts else {})

    # -- resume ---------------------------------------------------------------------------------
    def state(self):
        out = super().state()
        for t, prompts in self.demos.items():
            for j, p in enumerate(prompts):
                out[f"{PREFIX}{t}.{j}"] = torch.tensor(list(p.encode("utf-8")), dtype=torch.uint8)
        return out

    def held(self):
        """The demonstrations and the base model's frozen copy."""
        return {**self.state(), **{f"base.{n}": t for n, t in self.base.state_dict().items()}}

    def load_state(self, state):
        super().load_state(state)
        keys = sorted((tuple(map(int, k[len(PREFIX):].split("."))), k) for k in state if k.startswith(PREFIX))
        self.demos = {}
        for (t, _), key in keys:
            self.demos.setdefault(t, []).append(bytes(state[key].tolist()).decode("utf-8"))
