"""Batched greedy decoding for causal-LM backbones.

Hand-written because a ``Backbone`` keeps the transformer body (``backbone.model``, which methods wrap:
LoRA, adapters) apart from its output layer (``backbone.lm_head``), so there is no
``PreTrainedModel.generate`` to call for every backbone. It is a plain loop over transformers' own KV
cache: prompts left-padded in length-sorted batches, position ids from the attention mask, one new
token fed per step, argmax of its logits.

Under prompt tuning the virtual tokens enter the cache once: the prompt's pass puts their embeddings
first (positions 0..n-1, then the prompt's own positions shifted by n), and every later pass feeds the
base model (peft's forward would prepend them again) with the mask and positions shifted past them.
"""
from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from .. import distributed
from ..models.peft import max_positions, virtual_tokens
from ..train.batching import left_pad


@dataclass
class Sampling:
    """Sample each token from the top ``top_k`` logits at ``temperature`` instead of taking the argmax."""
    temperature: float
    top_k: int
    generator: torch.Generator


def greedy_decode(backbone, prompts: list[list[int]], max_new_tokens: int, *, device: torch.device,
                  batch_size: int = 32, stop_strings: Sequence[str] = (),
                  eos_ids: Collection[int] | None = None, sampling: Sampling | None = None) -> list[list[int]]:
    """The greedily generated token ids of each prompt, in the order given (an end id not included);
    with ``sampling``, sampled instead (top-k at a temperature, from its generator).

    A sequence ends at one of ``eos_ids`` (default: the tokenizer's ``eos_token_id``; a caller's own
    set replaces it, so it names every id that ends a sequence, and ``()`` none), once its decoded
    text contains one of ``stop_strings`` (its ids kept up to the token that completed it; the caller
    cuts the text), or after ``max_new_tokens``. The backbone must already be on ``device``; it is
    run in eval mode and put back in the mode it was in. Over several processes (greedy) each rank
    decodes its share of the prompts and every rank gets them all (``distributed.Ranks.map``)."""
    ranks = distributed.current()
    if ranks.active and sampling is None:
        return ranks.map(lambda part: _decode(backbone, part, max_new_tokens, device, batch_size, stop_strings,
                                              eos_ids, None), prompts)
    return _decode(backbone, prompts, max_new_tokens, device, batch_size, stop_strings, eos_ids, sampling)


def _decode(backbone, prompts: list[list[int]], max_new_tokens: int, device: torch.device, batch_size: int,
            stop_strings: Sequence[str], eos_ids: Collection[int] | None, sampling: Sampling | None) -> list[list[int]]:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_decode: every prompt needs at least one token")
    limit = max_positions(backbone.model)
    longest = max((len(p) for p in prompts), default=0)
    if limit is not None and longest + max_new_tokens > limit:
        virtual = virtual_tokens(backbone.model)
        raise ValueError(f"greedy_decode: a prompt of {longest} tokens + {max_new_tokens} new ones exceeds "
                         f"the model's {limit} positions" + (f" left by {virtual} virtual tokens" if virtual else ""))
    if eos_ids is None:
        eos = getattr(backbone.tokenizer, "eos_token_id", None)
        eos_ids = () if eos is None else (eos,)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[int]] = [[] for _ in prompts]
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start: start + batch_size]
                generated = _decode_batch(backbone, [prompts[i] for i in chunk], max_new_tokens, device,
                                          stop_strings, set(eos_ids), sampling)
                for i, ids in zip(chunk, generated):
                    out[i] = ids
    finally:
        backbone.train(was_training)
    return out


def _decode_batch(backbone, prompts: list[list[int]], max_new_tokens: int, device: torch.device,
                  stop_strings: Sequence[str], eos_ids: set[int], sampling: Sampling | None = None) -> list[list[int]]:
    """One left-padded batch: the prompt in one forward pass, then one token per step off the cache."""
    ids, mask = left_pad(prompts, backbone.pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)         # a padded prompt's positions are its unpadded ones
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    key, past = cache_keyword(backbone.model), None
    for step in range(max_new_tokens):
        hidden, past = cached_forward(backbone, ids, mask, positions, key, past, prefill=step == 0)
        logits = backbone.lm_head(hidden[:, -1])
        tokens = logits.argmax(-1) if sampling is None else _sample(logits, sampling)
        for row, token in enumerate(tokens.tolist()):
            if done[row]:
                continue
            if token in eos_ids:
                done[row] = True
                continue
            generated[row].append(token)
            if stop_strings and _has_stop(backbone, generated[row], stop_strings):
                done[row] = True
        if all(done):
            break
        ids = tokens.unsqueeze(-1)
        mask = torch.cat([mask, mask.new_ones((mask.size(0), 1))], dim=-1)
        positions = positions[:, -1:] + 1
    return generated


def cached_forward(backbone, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, key: str, cache,
                   *, prefill: bool):
    """The body on new tokens ``ids`` with the KV cache: ``mask`` covers the cached and the new tokens,
    ``positions`` are the new tokens' own. Returns their hidden states and the cache.

    Under prompt tuning the prefill (the first pass) puts the virtual tokens before the prompt, and
    every pass runs the base model with the mask and positions shifted past them (the cache holds them)."""
    n = virtual_tokens(backbone.model)
    if n == 0:
        out = backbone.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{key: cache})
        return out.last_hidden_state, out[key]
    peft_model, rows = backbone.model, ids.size(0)
    mask = torch.cat([mask.new_ones((rows, n)), mask], dim=1)
    positions = positions + n
    inputs = {"input_ids": ids}
    if prefill:
        embeds = peft_model.word_embeddings(ids)
        virtual = peft_model.get_prompt(batch_size=rows).to(embeds.dtype)
        inputs = {"inputs_embeds": torch.cat([virtual, embeds], dim=1)}
        positions = torch.cat([torch.arange(n, device=ids.device).expand(rows, n), positions], dim=1)
    out = peft_model.get_base_model()(**inputs, attention_mask=mask, position_ids=positions, use_cache=True,
                                      **{key: cache})
    return out.last_hidden_state[:, -ids.size(1):], out[key]


def _sample(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    top = (logits.float() / sampling.temperature).topk(min(sampling.top_k, logits.size(-1)))
    draw = torch.multinomial(top.values.softmax(-1).cpu(), 1, generator=sampling.generator).to(logits.device)
    return top.indices.gather(1, draw).squeeze(1)


def cache_keyword(model) -> str:
    """The name a model's forward takes its KV cache by, and returns it under: ``cache`` from
    transformers 5, ``past_key_values`` before (a peft wrapper passes it on to the model it wraps)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _has_stop(backbone, ids: list[int], stop_strings: Sequence[str]) -> bool:
    text = backbone.tokenizer.decode(ids, skip_special_tokens=True)
    return any(s in text for s in stop_strings)


def decode_text(backbone, ids: list[int], stop_strings: Sequence[str] = ()) -> str:
    """The text of generated ids (special tokens skipped), cut before the first stop string, stripped."""
    text = backbone.tokenizer.decode(ids, skip_special_tokens=True)
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return (text[: min(cuts)] if cuts else text).strip()
