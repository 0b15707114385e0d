"""Continual-learning methods, one file each; ``method_class(name)`` finds one by its config name."""
from . import (adapter, average, der, ema_lora, ewc, expand, freeze, generative_replay,  # noqa: F401
               inc_lora, joint, knn_memory, lora, lwf, mas, merge, multihead, o_lora, prompt_tuning, replay,
               retrieval, seq, seq_star, ssr)  # importing registers them
from .base import REGISTRY, Context, Method, MethodConfig


def method_class(name: str | None) -> type[Method]:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


__all__ = ["Method", "MethodConfig", "Context", "method_class", "REGISTRY"]
