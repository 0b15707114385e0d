"""Per-parameter importances estimated one example at a time: the diagonal Fisher (EWC) and MAS.

``forward`` maps a one-example batch to its logits (classes the scenario rules out at -inf);
``params`` are the parameters to score. Both return ``{name: tensor}`` averaged over examples.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


def diagonal_fisher(forward: Callable[[dict], torch.Tensor], params: dict[str, torch.nn.Parameter],
                    batches: Iterable[dict], labels: str = "true") -> dict[str, torch.Tensor]:
    """F_i = E_x E_y [(d log p(y|x) / d theta_i)^2]: y drawn from the model ("true" Fisher, as in
    Kirkpatrick et al.) or the data's label ("empirical")."""
    def log_likelihood(batch):
        logp = F.log_softmax(forward(batch), dim=-1)
        if labels == "true":
            y = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        else:
            y = batch["labels"]
        return logp.gather(1, y[:, None]).sum()

    return _mean_gradient_statistic(log_likelihood, params, batches, square=True)


def mas_importance(forward: Callable[[dict], torch.Tensor], params: dict[str, torch.nn.Parameter],
                   batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Omega_i = E_x |d ||f(x)||_2^2 / d theta_i| (Aljundi et al., 2018), f the finite logits."""
    def squared_norm(batch):
        out = forward(batch)
        return out.masked_fill(torch.isinf(out), 0.0).pow(2).sum()

    return _mean_gradient_statistic(squared_norm, params, batches, square=False)


def _mean_gradient_statistic(objective, params, batches, square: bool) -> dict[str, torch.Tensor]:
    """Mean over batches of each gradient squared (Fisher) or in absolute value (MAS)."""
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    names, tensors = list(params), list(params.values())
    count = 0
    for batch in batches:
        grads = torch.autograd.grad(objective(batch), tensors, allow_unused=True)
        for n, g in zip(names, grads):
            if g is not None:
                total[n] += g.pow(2) if square else g.abs()
        count += 1
    return {n: t / max(count, 1) for n, t in total.items()}
