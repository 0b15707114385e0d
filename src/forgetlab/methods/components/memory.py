"""A fixed-size episodic memory of training examples, filled by reservoir or class-balanced sampling.

An entry names an example by (task id, example id) rather than copying it, so replaying it uses
whatever the engine feeds the model (token ids, or cached features under a frozen backbone).
Entries may carry a tensor each (DER++ stores logits). Randomness comes from torch's global
generator, which the engine seeds per task.
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from ...config import Section


class ReplayConfig(Section):
    size: int = Field(200, ge=0)                                  # examples kept in total
    strategy: Literal["reservoir", "class_balanced"] = "reservoir"
    batch_size: int | None = Field(None, ge=1)                    # memory examples per step (None: train.batch_size)


class Memory:
    """Rows of (task_id, example_id, label[, payload]); ``add`` offers examples one by one."""

    def __init__(self, size: int, strategy: str = "reservoir"):
        self.size, self.strategy = size, strategy
        self.task_ids = torch.zeros(0, dtype=torch.long)
        self.example_ids = torch.zeros(0, dtype=torch.long)
        self.labels = torch.zeros(0, dtype=torch.long)
        self.payload: torch.Tensor | None = None
        self.seen = 0                                   # examples offered so far (reservoir)
        self.seen_per_class: dict[int, int] = {}        # examples offered so far, per class (class-balanced)

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, task_ids: torch.Tensor, example_ids: torch.Tensor, labels: torch.Tensor,
            payload: torch.Tensor | None = None) -> None:
        """Offer each example once, in the given order."""
        for i in range(len(labels)):
            row = (int(task_ids[i]), int(example_ids[i]), int(labels[i]), None if payload is None else payload[i])
            if self.strategy == "reservoir":
                self._offer_reservoir(row)
            else:
                self._offer_balanced(row)

    def _offer_reservoir(self, row) -> None:
        self.seen += 1
        if len(self) < self.size:
            self._append(row)
            return
        j = int(torch.randint(self.seen, ()))          # keep with probability size / seen
        if j < self.size:
            self._put(j, row)

    def _offer_balanced(self, row) -> None:
        """Per-class reservoirs under equal quotas; a new class shrinks the others' quotas by random eviction."""
        label = row[2]
        if label not in self.seen_per_class:
            self.seen_per_class[label] = 0
            self._shrink_to_quota()
        self.seen_per_class[label] += 1
        mine = (self.labels == label).nonzero().flatten()
        quota = self._quota(label)
        if len(mine) < quota:                           # every class is within its quota, so there is room
            self._append(row)
            return
        j = int(torch.randint(self.seen_per_class[label], ()))
        if j < len(mine):
            self._put(int(mine[j]), row)

    def _quota(self, label: int) -> int:
        classes = sorted(self.seen_per_class)
        base, extra = divmod(self.size, len(classes))
        return base + (1 if classes.index(label) < extra else 0)

    def _shrink_to_quota(self) -> None:
        keep = []
        for label in sorted(self.seen_per_class):
            mine = (self.labels == label).nonzero().flatten()
            quota = self._quota(label)
            keep.append(mine[torch.randperm(len(mine))[:quota]] if len(mine) > quota else mine)
        if keep:
            self._select(torch.cat(keep).sort().values)

    def _append(self, row) -> None:
        t, e, y, p = row
        self.task_ids = torch.cat([self.task_ids, torch.tensor([t])])
        self.example_ids = torch.cat([self.example_ids, torch.tensor([e])])
        self.labels = torch.cat([self.labels, torch.tensor([y])])
        if p is not None:
            p = p.detach().cpu().unsqueeze(0)
            self.payload = p if self.payload is None else torch.cat([self.payload, p])

    def _put(self, j: int, row) -> None:
        t, e, y, p = row
        self.task_ids[j], self.example_ids[j], self.labels[j] = t, e, y
        if p is not None:
            self.payload[j] = p.detach().cpu()

    def _select(self, idx: torch.Tensor) -> None:
        self.task_ids, self.example_ids, self.labels = self.task_ids[idx], self.example_ids[idx], self.labels[idx]
        if self.payload is not None:
            self.payload = self.payload[idx]

    def sample(self, k: int) -> torch.Tensor:
        """Indices of ``min(k, len)`` distinct entries, uniformly at random."""
        return torch.randperm(len(self))[:k]

    # -- resume ------------------------------------------------------------------------------
    def state(self, prefix: str = "memory.") -> dict[str, torch.Tensor]:
        out = {f"{prefix}task_ids": self.task_ids, f"{prefix}example_ids": self.example_ids,
               f"{prefix}labels": self.labels, f"{prefix}seen": torch.tensor(self.seen)}
        classes = sorted(self.seen_per_class)
        out[f"{prefix}classes"] = torch.tensor(classes, dtype=torch.long)
        out[f"{prefix}class_seen"] = torch.tensor([self.seen_per_class[c] for c in classes], dtype=torch.long)
        if self.payload is not None:
            out[f"{prefix}payload"] = self.payload
        return out

    def load_state(self, state: dict[str, torch.Tensor], prefix: str = "memory.") -> None:
        self.task_ids, self.example_ids = state[f"{prefix}task_ids"], state[f"{prefix}example_ids"]
        self.labels, self.seen = state[f"{prefix}labels"], int(state[f"{prefix}seen"])
        self.seen_per_class = dict(zip(state[f"{prefix}classes"].tolist(), state[f"{prefix}class_seen"].tolist()))
        self.payload = state.get(f"{prefix}payload")
