"""Scoring answers by likelihood: the log-probability a causal LM gives each continuation of a prompt.

A prompt is run once; its KV cache (transformers' ``DynamicCache``) is copied to each of its
continuations, so scoring k options costs one prompt pass and k short ones. Prompts are left-padded,
positions follow the attention mask, so a padded prompt scores as it would alone. Prompt tuning's
virtual tokens go into the prompt's cache (``generation.cached_forward``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed
from ..models.backbones import Backbone
from ..models.peft import max_positions
from ..train.batching import left_pad
from .generation import cache_keyword, cached_forward

MAX_ROWS = 256         # continuations scored at once (each holds a copy of its prompt's cache)


def continuation_logprobs(backbone: Backbone, prompts: list[list[int]], continuations: list[list[list[int]]],
                          device: torch.device, greedy: bool = False) -> list[list]:
    """For each prompt, the summed log-probability of each of its continuations (non-empty id lists);
    with ``greedy``, ``(log-probability, whether every token is the argmax)`` pairs. Over several
    processes each rank scores its share and every rank gets them all."""
    ranks = distributed.current()
    if not ranks.active:
        return _logprobs(backbone, prompts, continuations, device, greedy)
    return ranks.map(lambda part: _logprobs(backbone, [p for p, _ in part], [c for _, c in part], device, greedy),
                     list(zip(prompts, continuations)))


@torch.inference_mode()
def _logprobs(backbone: Backbone, prompts: list[list[int]], continuations: list[list[list[int]]],
              device: torch.device, greedy: bool = False) -> list[list]:
    from transformers import DynamicCache

    was_training = backbone.training
    backbone.eval()
    per_batch = max(1, MAX_ROWS // max(len(options) for options in continuations))
    key = cache_keyword(backbone.model)
    limit = max_positions(backbone.model) or 1 << 30
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(order), per_batch):
        idx = order[start: start + per_batch]
        ids, mask = left_pad([prompts[i] for i in idx], backbone.pad_id)
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        cache = DynamicCache()
        hidden, _ = cached_forward(backbone, ids, mask, positions, key, cache, prefill=True)
        first = F.log_softmax(backbone.lm_head(hidden[:, -1]).float(), dim=-1)
        rows = [(k, c) for k, i in enumerate(idx) for c in continuations[i]]
        select = torch.tensor([k for k, _ in rows], device=device)
        cache.reorder_cache(select)
        cont = [c for _, c in rows]
        width = max(len(c) for c in cont)
        cont_ids = torch.full((len(cont), width), backbone.pad_id, dtype=torch.long)
        cont_mask = torch.zeros((len(cont), width), dtype=torch.long)
        for r, c in enumerate(cont):
            cont_ids[r, : len(c)] = torch.tensor(c)
            cont_mask[r, : len(c)] = 1
        cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
        scores = first[select].gather(1, cont_ids[:, :1]).squeeze(1)
        argmax = first[select].argmax(1) == cont_ids[:, 0]
        if width > 1:
            steps = torch.arange(1, width, device=device)
            # a shorter continuation's padding may run past the model's positions: its ids are never scored
            cont_positions = (positions[select][:, -1:] + steps).clamp_max(limit - 1)
            hidden, _ = cached_forward(backbone, cont_ids[:, :-1], torch.cat([mask[select], cont_mask[:, :-1]], 1),
                                       cont_positions, key, cache, prefill=False)
            logp = F.log_softmax(backbone.lm_head(hidden).float(), dim=-1)
            token = logp.gather(2, cont_ids[:, 1:, None]).squeeze(2)
            scores = scores + (token * cont_mask[:, 1:]).sum(1)
            argmax = argmax & ((logp.argmax(2) == cont_ids[:, 1:]) | (cont_mask[:, 1:] == 0)).all(1)
        scores = list(zip(scores.tolist(), argmax.tolist())) if greedy else scores.tolist()
        for (k, _), value in zip(rows, scores):
            out[idx[k]].append(value)
    backbone.train(was_training)
    return out
