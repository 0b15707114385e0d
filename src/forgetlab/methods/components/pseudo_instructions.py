"""Pseudo-examples of old instruction tasks, written by the model from each task's instruction.

A task's instruction is what all its training prompts share: their longest common ending (the
question of a converted data set, "... Choose one of: ...") or beginning, whichever is longer. To
write a pseudo-example the current model is asked, through the run's template, for a new input to that
instruction (sampled: top-k at a temperature); the pseudo prompt is that input joined to the
instruction where the task's prompts have it (joined as they join it), and the model's own greedy answer to it is the
response. On a closed answer set an answer is kept only if it names an option (the option becomes the
response). No example of an old task is stored. ``answered`` and ``as_inputs`` also serve SSR
(``methods/ssr.py``), whose inputs another model writes.
"""
from __future__ import annotations

import os

import torch

from ...data.instructions import Instruction
from ...train.batching import Inputs

ASK = "Write one new input for the following task. Reply with the input only.\n\nTask: {instruction}"
MIN_SHARED = 8          # characters a common beginning or ending needs to count as the instruction


def shared_instruction(prompts: list[str]) -> tuple[str, str]:
    """``(instruction, side)``: the longest text every prompt ends ("suffix") or begins ("prefix") with,
    from a whitespace on (a word it starts or ends inside is dropped), with the whitespace that joins it
    to the input; ``("", "none")`` if they share fewer than ``MIN_SHARED`` characters."""
    suffix = os.path.commonprefix([p[::-1] for p in prompts])[::-1]
    prefix = os.path.commonprefix(prompts)
    if suffix and not suffix[0].isspace():
        suffix = suffix[next((i for i, c in enumerate(suffix) if c.isspace()), len(suffix)):]
    if prefix and not prefix[-1].isspace():
        prefix = prefix[: next((i + 1 for i in range(len(prefix) - 1, -1, -1) if prefix[i].isspace()), 0)]
    best, side = (suffix, "suffix") if len(suffix.strip()) >= len(prefix.strip()) else (prefix, "prefix")
    return (best, side) if len(best.strip()) >= MIN_SHARED else ("", "none")


class PseudoInstructions:
    """Writes pseudo-examples of a stream's instruction tasks with the learner's own backbone."""

    def __init__(self, kind, learner, device: torch.device, top_k: int, temperature: float, seed: int):
        self.kind, self.learner, self.device = kind, learner, device
        self.top_k, self.temperature, self.seed = top_k, temperature, seed
        self.instructions = [shared_instruction([e.prompt for e in t.train_examples]) for t in kind.stream.tasks]

    def examples(self, task, n: int) -> list[Instruction]:
        """Up to ``n`` pseudo-examples of ``task`` (fewer where answers name no option)."""
        from ...eval.generation import Sampling, decode_text, greedy_decode

        instruction, side = self.instructions[task.index]
        fmt, backbone = self.kind.formatter, self.learner.backbone
        window = backbone.max_length
        ask = fmt.prompt_ids(Instruction(ASK.format(instruction=instruction.strip() or task.name), ""), window // 2)
        sampling = Sampling(self.temperature, self.top_k, torch.Generator().manual_seed(self.seed * 7919 + task.index))
        inputs = [decode_text(backbone, ids) for ids in greedy_decode(
            backbone, [ask] * n, window // 2, device=self.device, eos_ids=fmt.eos_ids, sampling=sampling)]
        prompts = [join_instruction(text, instruction, side) for text in inputs if text]
        return self.answered(task, prompts)[0]

    def answered(self, task, prompts: list[str]) -> tuple[list[Instruction], int]:
        """The prompts with the current model's greedy answers as responses (on a closed answer set the
        option an answer names), and how many were dropped (an empty answer, or one naming no option)."""
        from ...eval.generation import decode_text, greedy_decode
        from ...eval.scoring import match_option

        fmt, backbone = self.kind.formatter, self.learner.backbone
        options = task.train_examples[0].options
        questions = [Instruction(p, "", options=options) for p in prompts]
        budget = max(1, backbone.max_length - task.max_new_tokens)
        answers = [decode_text(backbone, ids) for ids in greedy_decode(
            backbone, [fmt.prompt_ids(q, budget) for q in questions], task.max_new_tokens, device=self.device,
            eos_ids=fmt.eos_ids)]
        out = []
        for prompt, answer in zip(prompts, answers):
            if options:
                pick = match_option(answer, options)
                if pick is None:
                    continue
                answer = options[pick]
            if answer:
                out.append(Instruction(prompt, answer, options=options))
        return out, len(prompts) - len(out)

    def inputs(self, task, n: int) -> Inputs | None:
        """The pseudo-examples as training inputs of ``task`` (example ids -1: in no split)."""
        return self.as_inputs(task, self.examples(task, n))

    def as_inputs(self, task, examples: list[Instruction]) -> Inputs | None:
        """Examples of ``task`` as its training inputs (example ids -1: in no split); None if there are none."""
        if not examples:
            return None
        encoded = [self.kind.formatter.example(e) for e in examples]
        k = len(encoded)
        return Inputs(torch.zeros(k, dtype=torch.long), torch.full((k,), task.index), torch.full((k,), -1),
                      tokens=[e.input_ids for e in encoded], targets=[e.labels for e in encoded])


def join_instruction(text: str, instruction: str, side: str) -> str:
    """An input joined to its task's shared instruction where the task's prompts have it."""
    if side == "suffix":
        return text + instruction
    if side == "prefix":
        return instruction + text
    return text
