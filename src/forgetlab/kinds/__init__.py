"""Task kinds, one module each, registered here explicitly; ``kind_class(scenario)`` finds the kind
that serves a ``data.scenario``. The interface is ``base.Kind``."""
from .base import Kind
from .classification import Classification
from .instruction import InstructionTuning
from .language_modeling import LanguageModeling

KINDS: dict[str, type[Kind]] = {k.name: k for k in (Classification, LanguageModeling, InstructionTuning)}


def kind_class(scenario: str) -> type[Kind]:
    for kind in KINDS.values():
        if scenario in kind.scenarios:
            return kind
    known = [s for k in KINDS.values() for s in k.scenarios]
    raise KeyError(f"unknown scenario {scenario!r} (known: {', '.join(known)})")


__all__ = ["KINDS", "Kind", "kind_class"]
