"""Continual-learning methods, one file each; ``method_class(name)`` finds one by its config name."""
from . import freeze, joint, seq, seq_star  # noqa: F401  (importing registers them)
from .base import REGISTRY, Method, MethodConfig


def method_class(name: str | None) -> type[Method]:
    if name not in REGISTRY:
        raise KeyError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


__all__ = ["Method", "MethodConfig", "method_class", "REGISTRY"]
