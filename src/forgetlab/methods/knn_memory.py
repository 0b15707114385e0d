"""k-NN memory: retrieval over stored feature vectors, the external-memory (RAG-style) answer to
forgetting (cf. "Episodic Memory in Lifelong Language Learning", d'Autume et al., NeurIPS 2019, and
kNN-based continual learners).

After each task, the features of its training examples are stored with their labels. A test
example is classified by a vote of its k nearest stored neighbours (cosine similarity or
Euclidean distance) among the classes it may be predicted as; ties go to the smallest class
id, as in scikit-learn. ``blend < 1`` mixes the vote's distribution with the head's softmax. The
backbone is frozen by default, so stored features never go stale; if it trains, they are
re-encoded after every task.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from .base import Method, MethodConfig
from .components.index import VectorIndex


class KNNConfig(MethodConfig):
    k: int = Field(5, ge=1)
    metric: Literal["cosine", "euclidean"] = "cosine"
    blend: float = Field(1.0, ge=0, le=1)      # weight of the k-NN vote against the head's softmax
    freeze_backbone: bool = True


class KNNMemory(Method):
    name = "knn_memory"
    kinds = frozenset({"classification"})
    Config = KNNConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        self.index = VectorIndex(learner.backbone.dim, cfg.metric)   # features -> labels (shared with ``retrieval``)
        self.stored: list[int] = []                 # tasks whose examples are in the memory
        learner.scorer = self.scores

    def before_task(self, task):
        if self.cfg.freeze_backbone:
            self.learner.freeze_backbone()

    def after_task(self, task):
        super().after_task(task)
        self.stored.append(task.index)
        if self.learner.backbone_frozen:        # stored features stay valid: add the new task's
            data = self.ctx.inputs(task, "train")
            self.index.add(self.encode(data), data.labels)
            return
        datas = [self.ctx.inputs(self.ctx.stream.tasks[t], "train") for t in self.stored]   # re-encode all
        self.index.replace(torch.cat([self.encode(d) for d in datas]), torch.cat([d.labels for d in datas]))

    @torch.no_grad()
    def encode(self, data) -> torch.Tensor:
        batches = self.ctx.batches(data, self.ctx.train.eval_batch_size)
        return torch.cat([self.learner.encode(b).float().cpu() for b in batches])

    def neighbours(self, queries: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Indices [B, k'] of each query's nearest stored keys whose label is allowed (k' = min(k, M))."""
        return self.index.search(queries, self.cfg.k, allowed)

    def scores(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Log of blend * (k-NN vote shares) + (1 - blend) * softmax(head)."""
        num_classes = mask.size(1)
        probs = torch.zeros(len(features), num_classes, device=features.device)
        if len(self.index):
            labels = self.index.values.to(features.device)[self.neighbours(features, mask)]
            probs = F.one_hot(labels, num_classes).float().mean(1)
        if self.cfg.blend < 1:
            head = self.learner.head(features).masked_fill(~mask, float("-inf")).softmax(-1)
            probs = self.cfg.blend * probs + (1 - self.cfg.blend) * head
        return probs.clamp_min(1e-12).log()

    def state(self):
        return {**super().state(), **self.index.state("knn."), "knn.stored": torch.tensor(self.stored, dtype=torch.long)}

    def load_state(self, state):
        super().load_state(state)
        self.index.load_state(state, "knn.")
        self.stored = state["knn.stored"].tolist()
