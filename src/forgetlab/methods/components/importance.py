"""Per-parameter importances from per-example gradients: the diagonal Fisher (EWC) and MAS.

Both are a mean over examples of a per-example gradient statistic. They are computed in batched
passes (``per_example.py``, about 6x faster on MiniLM: ``forgetlab bench --only optimisations``) after checking, on the data's shortest and
longest examples, that the batched statistic equals the one-example-at-a-time loop; a model the
batched path cannot follow falls back to the loop. ``params`` are the parameters to score; the
result is ``{name: tensor}`` averaged over examples.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ... import distributed
from ...models.learner import Learner
from ...models.causal_lm import IGNORE_INDEX
from ...train.batching import Inputs, length_sorted_batches
from .per_example import Unsupported, batched_statistic

BATCH_SIZE = 32


def diagonal_fisher(learner: Learner, params: dict[str, torch.nn.Parameter], data: Inputs,
                    make_batch: Callable[[Inputs], dict], labels: str = "true",
                    batched: bool = True) -> dict[str, torch.Tensor]:
    """F_i = E_x E_y [(d log p(y|x) / d theta_i)^2]: y drawn from the model ("true" Fisher, as in
    Kirkpatrick et al.) or the data's target ("empirical"), over the rows that take a loss (a
    language model: every predicted token)."""
    def log_likelihood(batch):
        out = learner(batch)
        logp, targets = F.log_softmax(out.logits, dim=-1)[scored(out)], out.targets[scored(out)]
        y = torch.multinomial(logp.detach().exp(), 1).squeeze(1) if labels == "true" else targets
        return logp.gather(1, y[:, None]).sum()

    return mean_statistic(learner, log_likelihood, params, data, make_batch, square=True, batched=batched)


def mas_importance(learner: Learner, params: dict[str, torch.nn.Parameter], data: Inputs,
                   make_batch: Callable[[Inputs], dict]) -> dict[str, torch.Tensor]:
    """Omega_i = E_x |d ||f(x)||_2^2 / d theta_i| (Aljundi et al., 2018), f the finite logits."""
    return mean_statistic(learner, _squared_norm(learner), params, data, make_batch, square=False)


def _squared_norm(learner: Learner):
    def squared_norm(batch):
        out = learner(batch)
        logits = out.logits[scored(out)]
        return logits.masked_fill(torch.isinf(logits), 0.0).pow(2).sum()
    return squared_norm


def scored(out) -> torch.Tensor:
    """Which rows of the learner's output take a loss (targets not -100)."""
    return out.targets != IGNORE_INDEX


def mean_statistic(learner: Learner, objective, params: dict, data: Inputs, make_batch, square: bool,
                   batched: bool = True) -> dict[str, torch.Tensor]:
    """Mean over ``data`` of each per-example gradient squared (Fisher) or in absolute value (MAS);
    over several processes each rank sums over its share and the sums are all-reduced."""
    n, ranks = len(data), distributed.current()
    mine = data.subset(torch.arange(n)[ranks.rank::ranks.world]) if ranks.active else data
    total = _sum_statistic(learner, objective, params, mine, make_batch, square, batched)
    return {k: t / max(n, 1) for k, t in ranks.sum_tensors(total).items()}


def _sum_statistic(learner: Learner, objective, params: dict, data: Inputs, make_batch, square: bool,
                   batched: bool) -> dict[str, torch.Tensor]:
    n = len(data)
    if batched and n and _batched_path_agrees(learner, params, data, make_batch):
        lengths = [len(t) for t in data.tokens] if data.tokens is not None else [0] * n
        batches = (make_batch(data.subset(idx)) for idx in length_sorted_batches(lengths, BATCH_SIZE))
        total = batched_statistic(learner, objective, params, batches, square)
    else:
        total = _loop_statistic(objective, params, (make_batch(data.subset(torch.tensor([i]))) for i in range(n)),
                                square)
    return total


def _loop_statistic(objective, params: dict, batches, square: bool) -> dict[str, torch.Tensor]:
    """The reference: one backward pass per example."""
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    names, tensors = list(params), list(params.values())
    for batch in batches:
        grads = torch.autograd.grad(objective(batch), tensors, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                total[n] += g.pow(2) if square else g.abs()
    return total


def _batched_path_agrees(learner: Learner, params: dict, data: Inputs, make_batch) -> bool:
    """Whether the batched statistic of the shortest and longest examples (padded together) equals
    the loop's, for MAS's objective (deterministic, unlike the sampled Fisher's)."""
    lengths = [len(t) for t in data.tokens] if data.tokens is not None else list(range(len(data)))
    pair = torch.tensor(sorted({min(range(len(data)), key=lengths.__getitem__),
                                max(range(len(data)), key=lengths.__getitem__)}))
    objective = _squared_norm(learner)
    try:
        fast = batched_statistic(learner, objective, params, [make_batch(data.subset(pair))], square=True)
    except Unsupported:
        return False
    slow = _loop_statistic(objective, params, (make_batch(data.subset(i[None])) for i in pair), square=True)
    scale = max((t.abs().max().item() for t in slow.values() if t.numel()), default=0.0)
    return all(torch.allclose(fast[k], slow[k], rtol=1e-3, atol=1e-5 * scale) for k in slow)
