"""Classifier heads made of one block of rows per task.

A block is created for every task's new classes up front (seeded, so initialisation does not
depend on anything else), but a growing head only uses the blocks of tasks seen so far; a
pre-allocated head uses all of them from the start. Freezing old classes' rows is freezing
their blocks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Head(nn.Module):
    def __init__(self, dim: int, block_sizes: list[int], kind: str = "linear", scale: float = 16.0,
                 bias: bool = True, seed: int = 0):
        super().__init__()
        self.kind, self.scale = kind, scale
        self.block_sizes = list(block_sizes)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        bound = 1.0 / math.sqrt(dim)
        for b, n in enumerate(block_sizes):
            g = torch.Generator().manual_seed(seed * 100_003 + b)
            self.weights.append(nn.Parameter(torch.empty(n, dim).uniform_(-bound, bound, generator=g)))
            if bias and kind == "linear":
                self.biases.append(nn.Parameter(torch.empty(n).uniform_(-bound, bound, generator=g)))

    def weight(self) -> torch.Tensor:
        return torch.cat(list(self.weights), 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        if self.kind == "cosine":
            return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(w, dim=-1))
        b = torch.cat(list(self.biases), 0) if len(self.biases) else None
        return F.linear(x, w, b)

    def block_parameters(self, b: int) -> list[nn.Parameter]:
        return [self.weights[b]] + ([self.biases[b]] if len(self.biases) else [])
