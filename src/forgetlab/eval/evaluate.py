"""Accuracy on every task's test set, with the prediction space the scenario defines, and per class."""
from __future__ import annotations

from collections.abc import Callable

import torch

from ..data.stream import Task
from ..models.learner import Classifier
from .per_class import class_accuracy


def predictable(learner: Classifier, task: Task) -> bool:
    """Whether any of the task's classes can be predicted now (in class-incremental runs with a
    growing head, unseen tasks' classes cannot: their accuracy is 0 without running the model)."""
    mask = learner.class_mask(torch.tensor([task.index]))[0]
    return bool(mask[task.classes].any())


@torch.inference_mode()
def evaluate(learner: Classifier, tasks: list[Task], test_features: Callable[[list[Task]], list[torch.Tensor]],
             device: torch.device, seen: int = 0) -> tuple[list[float], list[float | None]]:
    """Accuracy (0..1) on each task's test set, and each class's accuracy over the test sets of the
    first ``seen`` tasks (None for a class with no test example there); ``test_features`` gives each
    task's features."""
    learner.eval()
    todo = [t for t in tasks if predictable(learner, t)]
    accuracy = {t.index: 0.0 for t in tasks}
    preds, golds = [torch.empty(0, dtype=torch.long)], [torch.empty(0, dtype=torch.long)]
    for task, feats in zip(todo, test_features(todo)):
        task_ids = torch.full((len(feats),), task.index, dtype=torch.long)
        logits = learner.logits(feats.to(device), task_ids.to(device))
        pred, gold = logits.argmax(-1).cpu(), torch.tensor(task.test_labels)
        accuracy[task.index] = (pred == gold).float().mean().item()
        if task.index < seen:
            preds.append(pred)
            golds.append(gold)
    per_class = class_accuracy(torch.cat(preds).numpy(), torch.cat(golds).numpy(), learner.num_classes)
    return [accuracy[t.index] for t in tasks], per_class
