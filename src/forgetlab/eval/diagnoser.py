"""What the engine measures after each task besides the accuracy matrix R: within-task accuracy,
where old tasks' errors land, the head's row norms, and, when asked, the probe matrix P, linear
CKA to the initial representation and the class-representation overlap. Rows are kept in a
JSON-able dict (part of the checkpoint state) so a resumed run continues them."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from ..config import EvalConfig
from ..data.stream import Stream, Task
from ..models.learner import Classifier
from .diagnostics import decomposition, error_share, linear_cka, trace_overlap, within_task_accuracy
from .probe import fit_probe

Features = Callable[..., list[torch.Tensor]]      # (tasks, split, limit=None) -> one tensor per task


class Diagnoser:
    def __init__(self, cfg: EvalConfig, stream: Stream, seed: int, state: dict):
        self.cfg, self.stream, self.seed = cfg, stream, seed
        self.state = state
        for key in ("within_task", "newest_task_error_share", "head_row_norms", "probe", "cka", "class_overlap",
                    "probe_layers"):
            state.setdefault(key, [])
        T = len(stream.tasks)
        self.cka_per_task = math.ceil(cfg.cka_examples / T)

    # -- CKA's fixed probe set: the first examples of every task's test set ------------------------
    def cka_features(self, features: Features) -> torch.Tensor:
        return torch.cat(features(self.stream.tasks, "test", limit=self.cka_per_task))

    @torch.inference_mode()
    def step(self, task: Task, learner: Classifier, features: Features, device: torch.device,
             cka_reference: torch.Tensor | None, layer_features: Callable | None = None) -> None:
        tasks, i = self.stream.tasks, task.index
        seen = tasks[: i + 1]
        test = dict(zip((t.index for t in seen), features(seen, "test")))
        within, wrong_new, wrong = [], 0, 0
        for t in tasks:
            if t.index > i:
                within.append(None)
                continue
            labels = torch.tensor(t.test_labels)
            ids = torch.full((len(labels),), t.index, dtype=torch.long, device=device)
            logits = learner.logits(test[t.index].to(device), ids).float().cpu()
            within.append(within_task_accuracy(logits, labels, t.classes))
            if t.index < i and self.stream.scenario == "class_incremental":
                a, b = error_share(logits.argmax(-1), labels, task.classes)
                wrong_new, wrong = wrong_new + a, wrong + b
        self.state["within_task"].append(within)
        self.state["newest_task_error_share"].append(wrong_new / wrong if wrong else None)
        weight = learner.head.weight().detach().float().cpu()
        self.state["head_row_norms"].append([float(weight[t.classes].norm(dim=1).mean()) for t in tasks])
        if self.cfg.probe:
            self.state["probe"].append(self._probe_row(task, learner, features))
        if self.cfg.probe_layers:
            self.state["probe_layers"].append({str(layer): self._probe_row(task, learner, _one_layer(layer_features, layer))
                                               for layer in self.cfg.probe_layers})
        if self.cfg.cka:
            self.state["cka"].append(linear_cka(cka_reference, self.cka_features(features)))
            self.state["class_overlap"].append([trace_overlap(test[t.index], test[i]) if t.index < i else None
                                                for t in tasks])

    def _probe_row(self, task: Task, learner: Classifier, features: Features) -> list[float]:
        """Fit a probe on the training features of every task seen so far; its accuracy on each task."""
        seen = self.stream.tasks[: task.index + 1]
        x = torch.cat(features(seen, "train"))
        y = torch.cat([torch.tensor(t.train_labels) for t in seen])
        probe = fit_probe(x, y, self.stream.num_classes, self.cfg.probe_type, self.cfg.probe_epochs,
                          self.cfg.probe_lr, self.cfg.probe_batch_size, seed=self.seed * 7919 + task.index)
        known = torch.zeros(self.stream.num_classes, dtype=torch.bool)
        known[y.unique()] = True
        row = []
        for t in self.stream.tasks:
            mask = learner.class_mask(torch.tensor([t.index]))[0].cpu() & known
            if not mask[t.classes].any():
                row.append(0.0)                   # none of its classes known yet: as R, 0
                continue
            feats = features([t], "test")[0]      # encoded once per step by the engine
            pred = probe.scores(feats.float()).masked_fill(~mask, float("-inf")).argmax(-1)
            row.append(float((pred == torch.tensor(t.test_labels)).float().mean()))
        return row

    def results(self, R: list[list[float]], P: list[list[float]] | None) -> dict:
        """The diagnostics section of results.json, given the accuracy and probe matrices."""
        s, T, R = self.state, len(R), np.asarray(R)
        old = range(T - 1)
        summary = {
            "across_task_acc_old": float(np.mean([R[-1, j] for j in old])) if T > 1 else None,
            "within_task_acc_old": float(np.mean([s["within_task"][-1][j] for j in old])) if T > 1 else None,
            "newest_task_error_share": s["newest_task_error_share"][-1],
        }
        if P is not None:
            summary["probe_acc"] = float(np.mean(P[-1]))
            summary["probe_acc_old"] = float(np.mean([P[-1][j] for j in old])) if T > 1 else None
        by_layer = None
        if s["probe_layers"]:
            by_layer = {layer: [row[layer] for row in s["probe_layers"]] for layer in s["probe_layers"][0]}
            summary["probe_acc_by_layer"] = {layer: float(np.mean(P_l[-1])) for layer, P_l in by_layer.items()}
        out = {"summary": summary, "probe_matrix_by_layer": by_layer, "within_task_matrix": s["within_task"],
               "newest_task_error_share": s["newest_task_error_share"], "head_row_norms": s["head_row_norms"],
               "decomposition": decomposition(R, P) if P is not None else None,
               "cka_to_initial": s["cka"] or None, "class_overlap": s["class_overlap"] or None}
        return out


def _one_layer(layer_features: Callable, layer: int) -> Features:
    """A ``features`` function for one hidden layer, from one that returns every probed layer."""
    return lambda tasks, split, limit=None: [f[:limit] for f in layer_features(tasks, split)[layer]]
