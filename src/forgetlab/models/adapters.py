"""Bottleneck adapters (Houlsby et al., ICML 2019): x -> x + up(gelu(down(x))) after chosen projections.

Inserted after each layer's attention output and feed-forward output projections (Houlsby's
placement), with the up-projection zero-initialised so that a new adapter starts as the
identity. Each wrapped projection holds named adapters (one shared, or one per task) and applies
the active one. The projection itself is untouched.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

# Output projections of attention and feed-forward blocks, by model family (name suffixes).
DEFAULT_TARGETS = {
    "bert": ["attention.output.dense", "output.dense"],
    "roberta": ["attention.output.dense", "output.dense"],
    "distilbert": ["attention.out_lin", "ffn.lin2"],
    "gpt2": ["attn.c_proj", "mlp.c_proj"],
    "llama": ["self_attn.o_proj", "mlp.down_proj"],
    "mistral": ["self_attn.o_proj", "mlp.down_proj"],
    "qwen2": ["self_attn.o_proj", "mlp.down_proj"],
}


class Bottleneck(nn.Module):
    def __init__(self, dim: int, size: int):
        super().__init__()
        self.down, self.up = nn.Linear(dim, size), nn.Linear(size, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(nn.functional.gelu(self.down(x)))


class Adapted(nn.Module):
    """A projection followed by the active one of its adapters."""

    def __init__(self, base: nn.Module, dim: int, names: list[str], size: int):
        super().__init__()
        self.base = base
        self.adapters = nn.ModuleDict({n: Bottleneck(dim, size) for n in names})
        self.active = names[0]

    def forward(self, *args, **kwargs):
        return self.adapters[self.active](self.base(*args, **kwargs))


def add_adapters(model: nn.Module, names: list[str], size: int, targets: list[str] | None) -> int:
    """Wrap every module whose name ends with a target; returns how many were wrapped."""
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        if model_type not in DEFAULT_TARGETS:
            raise UserError(f"method.target_modules: no default adapter placement for model type {model_type!r}; "
                            "name the output projections to adapt")
        targets = DEFAULT_TARGETS[model_type]
    found = [(n, m) for n, m in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    for name, module in found:
        parent, _, attr = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, Adapted(module, _out_features(module, name), names, size))
    if not found:
        raise UserError(f"method.target_modules: no module of the backbone matches {targets}")
    return len(found)


def set_active_adapter(model: nn.Module, name: str) -> None:
    for m in model.modules():
        if isinstance(m, Adapted):
            m.active = name


def _out_features(module: nn.Module, name: str) -> int:
    for attr in ("out_features", "nf"):          # nn.Linear; GPT-2's Conv1D
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise UserError(f"method.target_modules: {name} is not a linear projection")
