"""Prompt -> response examples as token ids: the template, the cut that keeps the response, the labels.

Templates: ``chat`` (the tokenizer's chat template: system, user and assistant turns, rendered by the
tokenizer's own ``apply_chat_template``), ``plain`` (an instruction/response template, for models
without one), ``auto`` (chat where the tokenizer has a template, else plain), or a format string with
``{prompt}`` (and optionally ``{system}``) that the response follows. A sequence longer than the window
loses its prompt's first tokens (the template's own tokens stay); the response keeps at least half the
window. Labels are -100 on every prompt token (TRL's convention): the loss is taken on the response and
on what ends the turn (the end-of-turn or end-of-text token), so the model learns to stop.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..data.instructions import Instruction
from ..errors import UserError
from .causal_lm import IGNORE_INDEX
from .tokenizer import ByteTokenizer

TEMPLATES = ("auto", "chat", "plain")
PLAIN = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]            # IGNORE_INDEX on the prompt
    prompt_length: int


class Formatter:
    """Renders and tokenizes examples for one tokenizer and template within ``max_length`` tokens."""

    def __init__(self, tokenizer, template: str, max_length: int, system: str | None = None, key: str = "data.template"):
        self.tokenizer, self.max_length, self.system = tokenizer, max_length, system
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        if template not in TEMPLATES and "{prompt}" not in template:
            raise UserError(f"{key}: unknown template {template!r} (auto, chat, plain, or a format string with {{prompt}})")
        if template == "chat" and not has_chat:
            raise UserError(f"{key}: chat: this tokenizer has no chat template (use plain or auto)")
        self.chat = template == "chat" or (template == "auto" and has_chat)
        self.format = None if self.chat else (PLAIN if template in ("auto", "plain") else template)
        self.start = self._encode_special("")            # what the tokenizer puts first (BOS), plain templates
        self.end = self._turn_end()
        self.eos_ids = {i for i in (getattr(tokenizer, "eos_token_id", None), self.end[0] if self.end else None)
                        if i is not None}

    # -- rendering -----------------------------------------------------------------------------
    def prompt_text(self, prompt: str, system: str | None = None) -> str:
        system = system if system is not None else self.system
        if self.chat:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = self.format.replace("{prompt}", prompt).replace("{system}", system or "")     # other braces stay
        return f"{system}\n\n{text}" if system and "{system}" not in self.format else text

    def _turn_end(self) -> list[int]:
        """The ids that close an assistant turn: the chat template's end of turn, else end of text."""
        if self.chat:
            messages = [{"role": "user", "content": "Q"}]
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            full = self.tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": "A"}], tokenize=False)
            if full.startswith(prompt) and "A" in full[len(prompt):]:
                return self.encode(full[len(prompt):].split("A", 1)[1])
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return [eos] if eos is not None else []

    # -- tokens --------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of text, no special tokens added."""
        if isinstance(self.tokenizer, ByteTokenizer):
            return [b + 3 for b in text.encode("utf-8")]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _encode_special(self, text: str) -> list[int]:
        if isinstance(self.tokenizer, ByteTokenizer):
            return [self.tokenizer.bos_token_id]
        return self.tokenizer(text)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def prompt_ids(self, example: Instruction, budget: int) -> list[int]:
        """The rendered prompt (ending where the response starts) in at most ``budget`` tokens, its
        text cut from the left as far as needed."""
        prompt = example.prompt
        for _ in range(4):
            ids = ([] if self.chat else self.start) + self.encode(self.prompt_text(prompt, example.system))
            over = len(ids) - budget
            if over <= 0:
                return ids
            content = self.encode(prompt)
            if over >= len(content):
                raise UserError(f"data: the template alone takes {len(ids) - len(content)} tokens, more than the "
                                f"{budget} left for a prompt (raise backbone.max_length)")
            prompt = self.decode(content[over:])
        return ids[-budget:]

    def example(self, example: Instruction) -> Encoded:
        """Prompt and response ids within the window, labels -100 on the prompt."""
        response = self.encode(example.response) + self.end
        prompt = self.prompt_ids(example, 10**9)
        response = response[: self.max_length - min(len(prompt), self.max_length // 2)]
        if len(prompt) + len(response) > self.max_length:
            prompt = self.prompt_ids(example, self.max_length - len(response))
        return Encoded(prompt + response, [IGNORE_INDEX] * len(prompt) + response, len(prompt))

    def continuation(self, text: str) -> list[int]:
        """A scored answer's ids: the text and what ends the turn (as trained)."""
        return self.encode(text) + self.end


def prompt_budget(window: int, max_new_tokens: int, positions: int | None, key: str = "data.max_new_tokens") -> int:
    """The tokens a prompt keeps for generation: the window less the answer's room (at least half the
    window), and never so many that prompt and answer outgrow the model's positions."""
    budget = max(window - max_new_tokens, window // 2)
    if positions is not None:
        budget = min(budget, positions - max_new_tokens)
    if budget < 1:
        raise UserError(f"{key}: {max_new_tokens} new tokens leave no room for a prompt in the model's "
                        f"{positions} positions")
    return budget
