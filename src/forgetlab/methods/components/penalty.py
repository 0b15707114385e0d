"""The quadratic penalty of EWC and MAS: sum_i Omega_i (theta_i - theta*_i)^2 over anchored parameters."""
from __future__ import annotations

import torch


class QuadraticPenalty:
    """One (importance, anchor) pair per consolidated task, or a single running pair (online EWC)."""

    def __init__(self):
        self.terms: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def add(self, importance: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
        """Anchor at the parameters' current values with this importance (a new term)."""
        self.terms.append(({n: w.detach().clone() for n, w in importance.items()},
                           {n: params[n].detach().clone() for n in importance}))

    def merge(self, importance: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
        """Online EWC: Omega <- decay * Omega + importance, anchored at the current values."""
        if not self.terms:
            self.add(importance, params)
            return
        old, _ = self.terms[0]
        merged = {n: decay * old.get(n, torch.zeros_like(w)) + w for n, w in importance.items()}
        merged.update({n: decay * w for n, w in old.items() if n not in importance})
        self.terms = []
        self.add(merged, {n: params[n] for n in merged})

    def __call__(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        total = None
        for importance, anchor in self.terms:
            for n, w in importance.items():
                term = (w * (params[n] - anchor[n]).pow(2)).sum()
                total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    # -- resume ------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {}
        for k, (importance, anchor) in enumerate(self.terms):
            out.update({f"penalty.{k}.importance.{n}": w for n, w in importance.items()})
            out.update({f"penalty.{k}.anchor.{n}": a for n, a in anchor.items()})
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        terms: dict[int, tuple[dict, dict]] = {}
        for key, value in state.items():
            if key.startswith("penalty."):
                _, k, kind, name = key.split(".", 3)
                pair = terms.setdefault(int(k), ({}, {}))
                pair[0 if kind == "importance" else 1][name] = value
        self.terms = [terms[k] for k in sorted(terms)]
