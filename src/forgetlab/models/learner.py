"""Learners: a backbone and what a task kind puts on it. :class:`Learner` is what every kind's learner
shares (freezing, the tasks seen, the parameters outside the backbone); :class:`Classifier` is the
classification kind's: backbone + head, and what the scenario allows it to predict."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import HeadConfig
from ..data.stream import Stream, Task
from .backbones import Backbone
from .heads import Head


@dataclass
class Output:
    logits: torch.Tensor                  # [..., C]: a row per prediction (classes ruled out set to -inf)
    features: torch.Tensor | None         # [B, dim] pooled features, where the kind has them
    targets: torch.Tensor                 # [...]: what each row should predict, -100 where no loss is taken


class Learner(nn.Module):
    """A backbone; a kind's learner adds what it predicts with and defines ``forward(batch) -> Output``."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.tasks_seen = 0

    def begin_task(self, task: Task) -> None:
        self.tasks_seen = max(self.tasks_seen, task.index + 1)

    def freeze_backbone(self, layers: int | None = None) -> None:
        """Freeze the whole backbone, or its embeddings and lowest ``layers`` layers."""
        if layers is None:
            self.backbone.requires_grad_(False)
            return
        for group in self.backbone.layer_groups()[: layers + 1]:
            for p in group:
                p.requires_grad_(False)

    @property
    def backbone_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.backbone.parameters())

    def own_parameters(self) -> list[nn.Parameter]:
        """The parameters outside the backbone (a head), trained at ``train.lr_head``."""
        return [p for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def own_state(self) -> dict[str, torch.Tensor]:
        """The state outside the backbone (saved apart from it: a frozen backbone is not saved again)."""
        return {n: t for n, t in self.state_dict().items() if not n.startswith("backbone.")}

    def frozen_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if not p.requires_grad]

    def restore_frozen(self, names: list[str]) -> None:
        frozen = set(names)
        for n, p in self.named_parameters():
            p.requires_grad_(n not in frozen)


class Classifier(Learner):
    """Maps batches to masked logits. Classes are global ids; head block b holds the classes new in task b."""

    def __init__(self, backbone: Backbone, head_cfg: HeadConfig, stream: Stream, seed: int = 0):
        super().__init__(backbone)
        self.scenario = stream.scenario
        self.num_classes = stream.num_classes
        self.task_classes = [t.classes for t in stream.tasks]
        seen: set[int] = set()
        self.block_of_task: list[int | None] = []
        sizes: list[int] = []
        for t in stream.tasks:
            new = [c for c in t.classes if c not in seen]
            seen.update(new)
            self.block_of_task.append(len(sizes) if new else None)
            if new:
                sizes.append(len(new))
        self._task_table = torch.zeros(len(stream.tasks), self.num_classes, dtype=torch.bool)
        for t, classes in enumerate(self.task_classes):
            self._task_table[t, classes] = True
        self.head = Head(backbone.dim, sizes, head_cfg.type, head_cfg.scale, head_cfg.bias, seed)
        self.preallocate = head_cfg.preallocate
        self.head.requires_grad_(False)
        self.task_id_at_test = stream.scenario == "task_incremental"   # predict within the task's classes
        self.scorer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # replaces the head at test time

    # -- state the engine and methods change ---------------------------------------------------
    def begin_task(self, task: Task) -> None:
        """Make task's classes predictable and its head block trainable."""
        super().begin_task(task)
        b = self.block_of_task[task.index]
        if b is not None:
            for p in self.head.block_parameters(b):
                p.requires_grad_(True)

    def freeze_head_blocks_before(self, task_index: int) -> None:
        for t in range(task_index):
            b = self.block_of_task[t]
            if b is not None:
                for p in self.head.block_parameters(b):
                    p.requires_grad_(False)

    # -- prediction ----------------------------------------------------------------------------
    def active_classes(self) -> torch.Tensor:
        """Bool mask of classes a class-incremental prediction may choose."""
        mask = torch.zeros(self.num_classes, dtype=torch.bool)
        if self.preallocate:
            mask[:] = True
        else:
            for t in range(self.tasks_seen):
                mask[self.task_classes[t]] = True
        return mask

    def class_mask(self, task_ids: torch.Tensor) -> torch.Tensor:
        """[B, C] mask of the classes each example may be predicted as, as the scenario says."""
        if self.task_id_at_test:
            return self._task_table[task_ids.cpu()]
        if self.scenario == "domain_incremental":
            return torch.ones(len(task_ids), self.num_classes, dtype=torch.bool)
        return self.active_classes().expand(len(task_ids), -1)

    def encode(self, batch: dict) -> torch.Tensor:
        if "features" in batch:
            return batch["features"]
        return self.backbone(batch["input_ids"], batch["attention_mask"])

    def logits(self, features: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        mask = self.class_mask(task_ids).to(features.device)
        use_scorer = self.scorer is not None and not self.training
        scores = self.scorer(features, mask) if use_scorer else self.head(features)
        return scores.masked_fill(~mask, float("-inf"))

    def forward(self, batch: dict) -> Output:
        features = self.encode(batch)
        return Output(self.logits(features, batch["task_ids"]), features, batch["labels"])
