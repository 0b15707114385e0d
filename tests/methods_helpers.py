"""A learner over hand-made feature vectors: its head is the whole model, so numbers can be checked by hand."""
from __future__ import annotations

import torch
from torch import nn

from forgetlab.config import HeadConfig, TrainConfig
from forgetlab.data.stream import Stream, Task
from forgetlab.methods import Context, method_class
from forgetlab.models.backbones import Backbone
from forgetlab.models.learner import Classifier
from forgetlab.models.tokenizer import ByteTokenizer
from forgetlab.train.batching import Inputs


def feature_setup(tasks: list[tuple[list[int], torch.Tensor, list[int]]], scenario="class_incremental",
                  bias=False, batch_size=4):
    """``tasks``: (classes, features [N, dim], labels) each. Returns (stream, learner, ctx)."""
    dim = tasks[0][1].shape[1]
    made = [Task(i, f"t{i}", classes, ["x"] * len(y), list(y), ["x"] * len(y), list(y))
            for i, (classes, _, y) in enumerate(tasks)]
    n_classes = max(c for classes, _, _ in tasks for c in classes) + 1
    stream = Stream(scenario, made, [f"c{c}" for c in range(n_classes)])
    backbone = Backbone(nn.Identity(), ByteTokenizer(), "mean", 8, dim, "identity")
    learner = Classifier(backbone, HeadConfig(bias=bias), stream)

    def inputs(task, split):
        _, feats, y = tasks[task.index]
        labels = torch.tensor(list(y))
        return Inputs(labels, torch.full_like(labels, task.index), torch.arange(len(labels)), features=feats)

    ctx = Context(stream, inputs, torch.device("cpu"), 0, TrainConfig(batch_size=batch_size, progress=False))
    return stream, learner, ctx


def make_method(name: str, learner, ctx, **keys):
    cls = method_class(name)
    return cls(cls.Config.model_validate({"name": name, **keys}), learner, ctx)


def set_head(learner, block: int, weight, bias=None) -> None:
    with torch.no_grad():
        learner.head.weights[block].copy_(torch.tensor(weight, dtype=torch.float32))
        if bias is not None:
            learner.head.biases[block].copy_(torch.tensor(bias, dtype=torch.float32))


def batch_of(ctx, task, idx=None) -> dict:
    data = ctx.inputs(task, "train")
    return ctx.batch(data if idx is None else data.subset(torch.tensor(idx)))
