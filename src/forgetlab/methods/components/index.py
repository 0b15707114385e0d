"""An exact nearest-neighbour index over stored vectors: what ``knn_memory`` (features -> labels) and
``retrieval`` (sentence embeddings -> stored examples) search.

Exact search, one matrix product per batch of queries, written here rather than taken from FAISS:
at the sizes a continual stream stores (10^2–10^5 entries of 384 floats) an exact inner product is
a few milliseconds on a CPU, which is what FAISS's own ``IndexFlatIP`` computes too; approximate
indices (IVF, HNSW) pay off only from millions of entries and would add a compiled dependency.
Each entry carries an integer ``value`` (a class id, a row of a memory) by which a search may be
restricted. Ties go to the entry stored first.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


class VectorIndex:
    """Keys [M, d] (float32, on the CPU) with an integer value each; ``search`` returns, per query, the
    positions of its ``k`` closest keys, closest first."""

    def __init__(self, dim: int, metric: Literal["cosine", "euclidean"] = "cosine"):
        self.metric = metric
        self.keys = torch.zeros(0, dim)
        self.values = torch.zeros(0, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys = torch.cat([self.keys, keys.detach().float().cpu()])
        self.values = torch.cat([self.values, values.long().cpu()])

    def replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Hold exactly these entries (e.g. re-encoded features, or a memory's current rows)."""
        self.keys, self.values = keys.detach().float().cpu(), values.long().cpu()

    def closeness(self, queries: torch.Tensor) -> torch.Tensor:
        """[B, M]: cosine similarity, or minus the Euclidean distance (larger is closer)."""
        keys = self.keys.to(queries.device)
        if self.metric == "cosine":
            return F.normalize(queries.float(), dim=-1) @ F.normalize(keys, dim=-1).T
        return -torch.cdist(queries.float(), keys)

    def search(self, queries: torch.Tensor, k: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Positions [B, min(k, M)] of each query's nearest keys, nearest first; with ``allowed`` (a
        bool mask [B, n_values]), only keys whose value the query allows (callers make sure each
        query allows at least ``k`` stored keys)."""
        closeness = self.closeness(queries)
        if allowed is not None:
            closeness = closeness.masked_fill(~allowed[:, self.values.to(queries.device)], float("-inf"))
        # a stable order: equal closeness keeps the entry stored first
        order = torch.sort(closeness, dim=-1, descending=True, stable=True).indices
        return order[:, : min(k, len(self))]

    @property
    def nbytes(self) -> int:
        return self.keys.numel() * self.keys.element_size() + self.values.numel() * self.values.element_size()

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}keys": self.keys, f"{prefix}values": self.values}

    def load_state(self, state: dict[str, torch.Tensor], prefix: str) -> None:
        self.keys, self.values = state[f"{prefix}keys"].float(), state[f"{prefix}values"].long()
