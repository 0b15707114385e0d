"""The quadratic penalty of EWC and MAS: sum_t sum_i Omega_t,i (theta_i - theta*_t,i)^2 over consolidated tasks.

A sum of quadratics is one quadratic, so however many tasks are consolidated the penalty keeps two
copies of the anchored parameters: Omega = sum_t Omega_t, the importance-weighted centre
mu = sum_t Omega_t theta*_t / Omega, and a constant c (float64) so the value is the sum's exactly:
    sum_t Omega_t (theta - theta*_t)^2 = Omega (theta - mu)^2 + c.
Online EWC instead decays the old importance and re-anchors: Omega <- decay * Omega + Omega_t, mu = theta*_t.

The penalty never enters the autograd graph: ``value`` is computed without gradient (for the logged
loss) and ``add_gradient`` adds its gradient 2 Omega (theta - mu) to ``.grad`` in place, one tensor at
a time, after the loss's backward pass. Built by autograd, Omega (theta - mu)^2 over every parameter
held several parameter-sized temporaries at once (``forgetlab bench --only methods`` measures the peak).
"""
from __future__ import annotations

import torch


class QuadraticPenalty:
    """Omega (theta - mu)^2 summed over anchored parameters, plus the constant ``offset``."""

    def __init__(self):
        self.importance: dict[str, torch.Tensor] = {}
        self.center: dict[str, torch.Tensor] = {}
        self.offset = 0.0
        self.tasks = 0                  # terms summed in (online EWC: merges)

    def add(self, importance: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> None:
        """Add the term importance * (theta - theta_now)^2 to the penalty."""
        for n, w in importance.items():
            anchor = params[n].detach()
            old_w = self.importance.get(n, torch.zeros_like(w))
            old_mu = self.center.get(n, torch.zeros_like(anchor))
            total = old_w + w
            mu = torch.where(total > 0, (old_w * old_mu + w * anchor) / total.clamp_min(1e-30), anchor)
            # c gains what the new centre leaves out: old_w old_mu^2 + w anchor^2 - total mu^2, which is
            # old_w w / total (old_mu - anchor)^2 (no cancellation), summed in float64
            self.offset += (old_w * w / total.clamp_min(1e-30) * (old_mu - anchor).pow(2)).sum(dtype=torch.float64).item()
            self.importance[n], self.center[n] = total.clone(), mu.clone()
        self.tasks += 1

    def merge(self, importance: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter], decay: float) -> None:
        """Online EWC: Omega <- decay * Omega + importance, anchored at the current values."""
        names = set(importance) | set(self.importance)
        self.importance = {n: decay * self.importance.get(n, torch.zeros_like(params[n])) +
                           importance.get(n, torch.zeros_like(params[n])) for n in names}
        self.center = {n: params[n].detach().clone() for n in names}
        self.offset, self.tasks = 0.0, self.tasks + 1

    @torch.no_grad()
    def value(self, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
        """Omega (theta - mu)^2 + c at the current parameters, without gradient."""
        if not self.importance:
            return torch.zeros(())
        # one tensor on the parameters' device: no host synchronisation per tensor on a GPU
        return sum((w * (params[n] - self.center[n]).pow_(2)).sum() for n, w in self.importance.items()) + self.offset

    @torch.no_grad()
    def add_gradient(self, params: dict[str, torch.nn.Parameter], scale: float) -> None:
        """Add scale * d/dtheta [Omega (theta - mu)^2] = 2 scale Omega (theta - mu) to each trainable ``.grad``."""
        for n, w in self.importance.items():
            p = params[n]
            if not p.requires_grad:
                continue
            step = (p - self.center[n]).mul_(w).mul_(2 * scale)
            if p.grad is None:
                p.grad = step
            else:
                p.grad.add_(step)

    # -- resume ------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        out = {f"penalty.importance.{n}": w for n, w in self.importance.items()}
        out.update({f"penalty.center.{n}": m for n, m in self.center.items()})
        if self.tasks:
            out["penalty.meta"] = torch.tensor([self.offset, float(self.tasks)], dtype=torch.float64)
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.importance = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("penalty.importance.")}
        self.center = {k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("penalty.center.")}
        meta = state.get("penalty.meta")
        self.offset, self.tasks = (float(meta[0]), int(meta[1])) if meta is not None else (0.0, 0)
