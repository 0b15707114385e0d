"""Classification: texts with labels, in the class-, task- and domain-incremental scenarios.

The learner is the backbone with a head (``models/learner.py``); what it may predict is what the
scenario allows. A frozen backbone's features are computed once and cached across tasks and runs
(``train/features.py``). Evaluation gives the accuracy matrix R, the probe matrix P when
``eval.probe`` asks for it, per-class accuracy and the diagnostics of ``eval/diagnoser.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import ConfigDict, Field
from safetensors.torch import load_file, save_file

from .. import distributed
from ..config import DataConfig, HeadConfig
from ..data.sources import cache_dir
from ..data.stream import Task, build_stream
from ..data.transforms import TransformConfig
from ..errors import UserError
from ..eval.diagnoser import Diagnoser
from ..eval.evaluate import evaluate
from ..models.backbones import Backbone, LSTMEncoder
from ..models.learner import Classifier
from ..train.batching import Inputs
from ..train.features import FeatureCache, encode, encode_layers
from .base import Kind, Rows

CKA_REFERENCE = "cka-reference.safetensors"      # the fixed probe set's features under the initial backbone


class ClassificationData(DataConfig):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    scenario: Literal["class_incremental", "task_incremental", "domain_incremental"] = "class_incremental"
    classes_per_task: int | None = Field(None, ge=1)
    num_tasks: int | None = Field(None, ge=1)
    exact_division: bool = True                  # classes must divide evenly into tasks
    task_field: str | None = None                # domain-incremental: split one data set by this field
    max_train_per_class: int | None = Field(None, ge=1)
    max_test_per_class: int | None = Field(None, ge=1)
    drop_labels: list[str] = []                  # labels removed before splitting (e.g. "oos")
    transform: TransformConfig | None = None     # redundancy, sparsity, few-shot, long tail (training sets only)


class Classification(Kind):
    name = "classification"
    scenarios = ("class_incremental", "task_incremental", "domain_incremental")
    Data = ClassificationData
    matrices = {"accuracy": ("acc", "higher"), "probe": ("probe_acc", "higher")}

    def __init__(self, cfg, device):
        super().__init__(cfg, device)
        self._tokens: dict[tuple[int, str], list[list[int]]] = {}
        self._frozen: dict[tuple[int, str], torch.Tensor] | None = None     # under the frozen backbone
        self._step: dict[tuple[int, str], torch.Tensor] = {}                 # encoded since the last training
        self._layers: dict[tuple[int, str], dict[int, torch.Tensor]] = {}

    def build_stream(self):
        return build_stream(self.cfg.data, self.cfg.seed)

    def build_learner(self, backbone: Backbone, head: HeadConfig) -> Classifier:
        layers = self.cfg.eval.probe_layers
        if layers:
            if isinstance(backbone.model, LSTMEncoder):
                raise UserError("eval.probe_layers: the LSTM backbone has no per-layer hidden states to probe")
            depth = len(backbone.layer_groups()) - 1          # hidden states: embeddings + one per layer
            bad = [k for k in layers if not -(depth + 1) <= k <= depth]
            if bad:
                raise UserError(f"eval.probe_layers: {bad} out of range for a {depth}-layer backbone (0..{depth}, or negative)")
        self.learner = Classifier(backbone, head, self.stream, seed=self.cfg.seed)
        return self.learner

    # -- inputs ------------------------------------------------------------------------------
    def inputs(self, task: Task, split: str) -> Inputs:
        labels = torch.tensor(task.train_labels if split == "train" else task.test_labels)
        ids = (labels, torch.full_like(labels, task.index), torch.arange(len(labels)))
        if self.learner.backbone_frozen:
            return Inputs(*ids, features=self.frozen_features()[(task.index, split)])
        key = (task.index, split)
        if key not in self._tokens:
            self._tokens[key] = self.learner.backbone.tokenize(_texts(task, split))
        return Inputs(*ids, tokens=self._tokens[key])

    def frozen_features(self) -> dict[tuple[int, str], torch.Tensor]:
        """Features of every example of the stream under the frozen backbone, via the cache."""
        if self._frozen is None:
            backbone = self.learner.backbone
            cache = FeatureCache(cache_dir() / "features" if self.cfg.train.feature_cache else None, backbone.fingerprint())
            keys = [(t.index, s) for t in self.stream.tasks for s in ("train", "test")]
            texts = [_texts(self.stream.tasks[i], s) for i, s in keys]
            flat = cache.get(backbone, [x for group in texts for x in group], self.cfg.train.eval_batch_size, self.device)
            self._frozen = dict(zip(keys, torch.split(flat, [len(g) for g in texts])))
        return self._frozen

    def features(self, tasks: list[Task], split: str, limit: int | None = None) -> list[torch.Tensor]:
        """Each task's features under the current backbone (its first ``limit`` examples if given),
        kept until the backbone next trains."""
        if self.learner.backbone_frozen:
            return [self.frozen_features()[(t.index, split)][:limit] for t in tasks]
        todo = [t for t in tasks if (t.index, split) not in self._step]
        fresh = dict(zip((t.index for t in todo), self._encode_tasks(todo, split, limit)))
        for t in todo:
            if limit is None or limit >= len(_texts(t, split)):
                self._step[(t.index, split)] = fresh[t.index]
        return [fresh[t.index] if t.index in fresh else self._step[(t.index, split)][:limit] for t in tasks]

    def _encode_tasks(self, tasks: list[Task], split: str, limit: int | None) -> list[torch.Tensor]:
        """Each task's features: task by task where the method switches encoders between tasks, else in
        one length-sorted pass over all their texts (fuller batches, less padding)."""
        texts = [_texts(t, split)[:limit] for t in tasks]
        size, backbone = self.cfg.train.eval_batch_size, self.learner.backbone
        if self.method.per_task_encoder:
            out = []
            for t, group in zip(tasks, texts):
                self.method.eval_task(t)               # it swaps the learner's backbone
                out.append(encode(self.learner.backbone, group, size, self.device))
            return out
        if not tasks:
            return []
        flat = encode(backbone, [x for group in texts for x in group], size, self.device)
        return list(torch.split(flat, [len(group) for group in texts]))

    def layer_features(self, tasks: list[Task], split: str) -> dict[int, list[torch.Tensor]]:
        """Each task's features at every ``eval.probe_layers`` hidden state, kept until the backbone next trains."""
        layers = self.cfg.eval.probe_layers
        for t in tasks:
            if (t.index, split) not in self._layers:
                self.method.eval_task(t)
                self._layers[(t.index, split)] = encode_layers(
                    self.learner.backbone, _texts(t, split), layers, self.cfg.train.eval_batch_size, self.device)
        return {k: [self._layers[(t.index, split)][k] for t in tasks] for k in layers}

    def test_features(self, tasks: list[Task]) -> list[torch.Tensor]:
        return self.features(tasks, "test")

    # -- evaluation --------------------------------------------------------------------------
    def start(self, method, folder: Path) -> None:
        self.method = method
        self.diagnoser = Diagnoser(self.cfg.eval, self.stream, self.cfg.seed, self.state.setdefault("diagnostics", {}))
        self.state.setdefault("class_rows", [])
        self.cka_reference = None
        if self.cfg.eval.cka:
            reference, ranks = folder / CKA_REFERENCE, distributed.current()
            if ranks.broadcast(not reference.is_file()):      # a fresh run: the initial backbone's features
                features = self.diagnoser.cka_features(self.features)
                if ranks.main:
                    folder.mkdir(parents=True, exist_ok=True)
                    save_file({"features": features}, str(reference))
                ranks.barrier()
            self.cka_reference = load_file(str(reference))["features"]

    def evaluate(self, method, seen: int, record: bool = True) -> Rows:
        if seen and not self.learner.backbone_frozen:   # the backbone trained: features under it went stale
            self._step, self._layers, self._frozen = {}, {}, None
        elif seen:
            self._step, self._layers = {}, {}
        row, class_row = evaluate(self.learner, self.stream.tasks, self.test_features, self.device, seen=seen)
        if not seen or not record:
            return {"accuracy": row, "probe": None}
        self.state["class_rows"].append(class_row)
        self.diagnoser.step(self.stream.tasks[seen - 1], self.learner, self.features, self.device,
                            self.cka_reference, self.layer_features)
        return {"accuracy": row, "probe": self.diagnoser.state["probe"][-1] if self.cfg.eval.probe else None}

    def results(self, matrices: dict[str, dict]) -> dict:
        return {"class_names": self.stream.class_names, "class_train_counts": self.stream.class_train_counts(),
                "per_class_accuracy": self.state["class_rows"],
                "diagnostics": self.diagnoser.results(matrices["accuracy"]["values"],
                                                      (matrices.get("probe") or {}).get("values"))}


def _texts(task: Task, split: str) -> list[str]:
    return task.train_texts if split == "train" else task.test_texts
