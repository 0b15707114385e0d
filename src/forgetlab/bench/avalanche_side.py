"""The incumbents benchmark's Avalanche side: the same stream, backbone, head, optimizer and steps run
through avalanche-lib's own strategies, where avalanche-lib is installed (it needs torchvision;
``benchmarks/README.md`` says how to make an environment that has both).

What is made the same as the other sides (``incumbents.py``): the stream, MiniLM with mean pooling
and one masked linear head over all classes (the Trainer side's ``Classifier``), a fused AdamW with
the backbone and head at their own learning rates, gradient clipping (a plugin), batch size, one
epoch per task, evaluation batches of 128 on every task seen so far. Texts are padded to
``max_length`` as Avalanche stacks tensors, then each batch is cut to its longest text inside the
model, so Avalanche also gets dynamic padding. What is Avalanche's own, as a user would run it:
``Naive`` for seq; ``EWC`` (mode "separate", one penalty per past experience, its Fisher from
mini-batch gradients: cheaper than the per-example Fisher forgetlab and the Trainer side compute,
and a different estimate), with ``ewc_lambda`` = forgetlab's lambda / 2 because Avalanche's penalty
has no 1/2; ``ReplayPlugin`` with a reservoir buffer of the same size, whose loader joins a memory
batch to each training batch; AdamW's state kept across experiences (Avalanche's default).
"""
from __future__ import annotations

import importlib.util

import torch
from torch import nn

from ..config import Config
from ..data.stream import build_stream
from ..methods.ewc import EWCConfig
from ..models.backbones import resolve_model_path


def available() -> bool:
    return importlib.util.find_spec("avalanche") is not None


class PackedInputs(nn.Module):
    """Avalanche hands the model one tensor: token ids and attention mask stacked as [B, 2, L]."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        width = int(mask.sum(1).max())                    # dynamic padding: the batch's longest text
        return self.classifier(ids[:, :width], mask[:, :width])["logits"]


def run_avalanche(cfg: Config, method: str, replay_size: int) -> tuple[list[list[float]], list[int]]:
    """R and the optimizer steps per task of one stream run by Avalanche's strategies."""
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.core import SupervisedPlugin
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
    from avalanche.training.storage_policy import ReservoirSamplingBuffer
    from avalanche.training.supervised import EWC, Naive
    from transformers import AutoTokenizer

    from .incumbents import Classifier

    torch.manual_seed(cfg.seed)
    stream = build_stream(cfg.data, cfg.seed)
    path = resolve_model_path(cfg.backbone.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    classifier = Classifier(path, stream.num_classes)

    def tensors(texts: list[str], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=cfg.backbone.max_length,
                        return_tensors="pt", return_token_type_ids=False)
        return torch.stack([enc["input_ids"], enc["attention_mask"]], 1), torch.tensor(labels)

    scenario = tensors_benchmark(train_tensors=[tensors(t.train_texts, t.train_labels) for t in stream.tasks],
                                 test_tensors=[tensors(t.test_texts, t.test_labels) for t in stream.tasks],
                                 task_labels=[0] * len(stream.tasks))

    class Steps(SupervisedPlugin):
        """Clips gradients before each update, as the other sides do, and counts the updates."""

        def __init__(self):
            super().__init__()
            self.count = 0

        def before_update(self, strategy, **kwargs):
            torch.nn.utils.clip_grad_norm_(strategy.model.parameters(), cfg.train.grad_clip)

        def after_update(self, strategy, **kwargs):
            self.count += 1

    steps = Steps()
    plugins: list = [steps]
    if method == "replay":
        plugins.append(ReplayPlugin(mem_size=replay_size, storage_policy=ReservoirSamplingBuffer(replay_size)))
    optimizer = torch.optim.AdamW([{"params": classifier.encoder.parameters(), "lr": cfg.train.lr_backbone},
                                   {"params": classifier.head.parameters(), "lr": cfg.train.lr_head}],
                                  weight_decay=cfg.train.weight_decay, fused=True)
    common = dict(model=PackedInputs(classifier), optimizer=optimizer, criterion=nn.CrossEntropyLoss(),
                  train_mb_size=cfg.train.batch_size, train_epochs=cfg.train.epochs,
                  eval_mb_size=cfg.train.eval_batch_size, device="cpu", plugins=plugins,
                  evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    if method == "ewc":
        strategy = EWC(ewc_lambda=EWCConfig(name="ewc").lam / 2, mode="separate", **common)
    else:
        strategy = Naive(**common)

    R, per_task = [], []
    for task, experience in zip(stream.tasks, scenario.train_stream):
        classifier.seen[task.classes] = True
        before = steps.count
        strategy.train(experience)
        per_task.append(steps.count - before)
        metrics = strategy.eval(scenario.test_stream[: task.index + 1])
        row = [0.0] * len(stream.tasks)        # tasks not seen yet: their classes are masked
        for j in range(task.index + 1):
            row[j] = next(v for k, v in metrics.items() if k.startswith("Top1_Acc_Exp/") and k.endswith(f"Exp{j:03d}"))
        R.append(row)
    return R, per_task
