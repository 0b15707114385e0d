"""Per-example gradient statistics in batched passes: for every parameter, the sum over examples of
g_n^2 (the Fisher's) or |g_n| (MAS's), g_n the gradient of example n's own objective, without one
backward pass per example.

One backward pass gives the gradient of each module's *output* per example; the per-example
gradient of the module's parameters is then formed one module at a time and reduced at once:
``nn.Linear`` as g_n^T x_n, ``nn.Embedding`` by summing g_n into the rows of the tokens example n
used, ``nn.LayerNorm`` from the normalised input, and any other module that owns parameters (a
classifier head, an RMSNorm, a GPT-2 ``Conv1D``) by ``torch.func``'s vector-Jacobian product under
``vmap`` (in chunks of at most ``CHUNK_ELEMENTS`` numbers). Only one module's per-example
gradients exist at any time; a Linear layer's, one example at a time. A module whose output has batch size 1 where the batch has B examples
(position embeddings, broadcast later) gets its output expanded to B so each example's share of the
gradient can be read.

The result is exact only if examples do not interact (evaluation mode), every module that owns
parameters runs at most once per forward pass and parameters are used only inside their module.
``Unsupported`` is raised where this module can tell; ``importance.py`` also checks the result
against the one-example-at-a-time loop on two examples before trusting it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vjp, vmap

CHUNK_ELEMENTS = 2 ** 25          # per-example gradient numbers formed at once (128 MiB in fp32)


class Unsupported(Exception):
    """The model does something the batched path cannot follow exactly."""


def batched_statistic(model: nn.Module, objective: Callable[[dict], torch.Tensor],
                      params: dict[str, torch.nn.Parameter], batches: Iterable[dict],
                      square: bool) -> dict[str, torch.Tensor]:
    """Sum over all examples of ``batches`` of each per-example gradient squared (or absolute);
    ``objective(batch)`` is the sum of the examples' own objectives."""
    totals = {n: torch.zeros_like(p) for n, p in params.items()}
    owners: dict[nn.Module, dict[str, str]] | None = None
    for batch in batches:
        if owners is None:
            owners = _owners(model, objective, params, batch)
        with _Recorder(owners, len(batch["labels"])) as recorder:
            value = objective(batch)
        outputs = [call.output for call in recorder.calls]
        grads = torch.autograd.grad(value, outputs, allow_unused=True) if outputs else []
        with torch.no_grad():                         # (an activation's graph must not grow into the totals)
            for call, g in zip(recorder.calls, grads):
                if g is not None:
                    _accumulate(call, g, owners[call.module], params, totals, square)
    return totals


def _owners(model: nn.Module, objective, params: dict, batch: dict) -> dict[nn.Module, dict[str, str]]:
    """Each parameter's owner: the innermost module that runs in a forward pass and contains it,
    as {module: {name inside the module: name in ``params``}}."""
    called: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, a, o: called.append(m)) for m in model.modules()]
    try:
        with torch.no_grad():
            objective(batch)
    finally:
        for h in handles:
            h.remove()
    if len(set(map(id, called))) != len(called):
        raise Unsupported("a module runs more than once per forward pass")
    size = {m: sum(1 for _ in m.modules()) for m in called}
    holders: dict[int, list[nn.Module]] = {}
    for m in called:
        for q in m.parameters():
            holders.setdefault(id(q), []).append(m)
    owners: dict[nn.Module, dict[str, str]] = {}
    for n, p in params.items():
        if id(p) not in holders:
            continue                                  # not used in this forward: its statistic is 0
        inner, *outer = sorted(holders[id(p)], key=lambda m: size[m])
        if any(not any(c is inner for c in m.modules()) for m in outer):
            raise Unsupported(f"{n} is shared between modules")
        local = next(k for k, q in inner.named_parameters() if q is p)
        owners.setdefault(inner, {})[local] = n
    return owners


class _Call:
    def __init__(self, module: nn.Module, args: tuple, output: torch.Tensor):
        self.module, self.output = module, output
        self.args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


class _Recorder:
    """Forward hooks on the owners that keep each call's inputs and (batch-expanded) output."""

    def __init__(self, owners: dict[nn.Module, dict[str, str]], batch_size: int):
        self.owners, self.batch_size, self.calls, self.handles = owners, batch_size, [], []

    def __enter__(self) -> "_Recorder":
        self.handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.owners]
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _hook(self, module, args, kwargs, output):
        if not isinstance(output, torch.Tensor) or any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            raise Unsupported(f"{type(module).__name__}: tensor keyword arguments or a non-tensor output")
        if output.dim() == 0 or output.size(0) not in (1, self.batch_size):
            raise Unsupported(f"{type(module).__name__}: output without the batch dimension")
        if output.size(0) != self.batch_size:
            output = output.expand(self.batch_size, *output.shape[1:])
        self.calls.append(_Call(module, args, output))
        return output


def _accumulate(call: _Call, g: torch.Tensor, names: dict[str, str], params: dict,
                totals: dict[str, torch.Tensor], square: bool) -> None:
    stat = torch.square if square else torch.abs
    module, B = call.module, g.size(0)
    x = call.args[0] if call.args else None
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.size(0) == 1 and B > 1:
        x = x.expand(B, *x.shape[1:])
    if isinstance(module, nn.Linear):
        x, g = x.reshape(B, -1, x.size(-1)), g.reshape(B, -1, g.size(-1))
        if "weight" in names:                         # one example at a time: g_n^T x_n stays in cache
            total = totals[names["weight"]]
            for n in range(B):
                per_example = torch.mm(g[n].t(), x[n])
                if square:
                    total.addcmul_(per_example, per_example)
                else:
                    total.add_(per_example.abs_())
        if "bias" in names:
            totals[names["bias"]] += stat(g.sum(1)).sum(0)
    elif isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.scale_grad_by_freq:
            raise Unsupported("nn.Embedding with max_norm or scale_grad_by_freq")
        ids, g = x.reshape(B, -1), g.reshape(B, -1, g.size(-1))
        if module.padding_idx is not None:
            g = g.masked_fill((ids == module.padding_idx).unsqueeze(-1), 0.0)
        rows = module.num_embeddings
        key = (torch.arange(B, device=ids.device).unsqueeze(1) * rows + ids).flatten()
        unique, where = torch.unique(key, return_inverse=True)
        summed = g.new_zeros(len(unique), g.size(-1)).index_add_(0, where, g.reshape(-1, g.size(-1)))
        totals[names["weight"]].index_add_(0, unique % rows, stat(summed))
    elif isinstance(module, nn.LayerNorm):
        width = module.weight.numel() if module.weight is not None else module.bias.numel()
        normed = F.layer_norm(x, module.normalized_shape, eps=module.eps)
        normed, g = normed.reshape(B, -1, width), g.reshape(B, -1, width)
        if "weight" in names:
            totals[names["weight"]] += stat((g * normed).sum(1)).sum(0).view_as(module.weight)
        if "bias" in names:
            totals[names["bias"]] += stat(g.sum(1)).sum(0).view_as(module.bias)
    else:
        _accumulate_any(call, g, names, params, totals, stat)


def _accumulate_any(call: _Call, g: torch.Tensor, names: dict[str, str], params: dict,
                    totals: dict[str, torch.Tensor], stat) -> None:
    """Any other module: the vector-Jacobian product of one example at a time, vectorised by vmap."""
    B = g.size(0)
    dims = tuple(0 if isinstance(a, torch.Tensor) and a.dim() > 0 and a.size(0) == B else None for a in call.args)
    own = {local: params[name].detach() for local, name in names.items()}

    def one_example(g_n, *args_n):
        args = [a.unsqueeze(0) if d == 0 else a for a, d in zip(args_n, dims)]
        _, pullback = vjp(lambda p: functional_call(call.module, p, tuple(args)), own)
        return pullback(g_n.unsqueeze(0))[0]

    size = sum(p.numel() for p in own.values())
    per_example = vmap(one_example, in_dims=(0, *dims), chunk_size=max(1, CHUNK_ELEMENTS // size))(g, *call.args)
    for local, name in names.items():
        totals[name] += stat(per_example[local]).sum(0)
