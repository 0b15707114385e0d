"""The task-kind interface: what the engine knows of a kind of task.

A kind owns its data section, how its stream is built, its learner, how examples become model
inputs, and how it evaluates. Write one module that subclasses :class:`Kind` and list it in
``kinds/__init__.py``; the engine's loop (``engine.py``) then runs it with every method whose
``kinds`` allow it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch

from ..config import Config, DataConfig, HeadConfig
from ..data.stream import Stream, Task
from ..models.backbones import Backbone
from ..models.learner import Learner
from ..train.batching import Inputs

if TYPE_CHECKING:
    from ..methods.base import Method

Rows = dict[str, list[float] | None]      # matrix name -> one row (a value per task), None: not measured


class Kind:
    """A kind of task. ``matrices`` names what ``evaluate`` measures, each with its direction; the first
    is the primary one (the log line's, the trackers', and the one whose metrics carry no suffix)."""

    name: ClassVar[str]
    scenarios: ClassVar[tuple[str, ...]]          # the ``data.scenario`` values this kind serves
    Data: ClassVar[type[DataConfig]]              # its data section
    matrices: ClassVar[dict[str, tuple[str, str]]]  # name -> (metric key, "higher" | "lower")
    packs: ClassVar[bool] = False                 # whether its learner takes packed rows (``train.packing``)

    def __init__(self, cfg: Config, device: torch.device):
        self.cfg, self.device = cfg, device
        self.stream: Stream = self.build_stream()
        self.state: dict = {}                     # JSON-able; checkpointed with the run, restored on resume

    def build_stream(self) -> Stream:
        raise NotImplementedError

    def build_learner(self, backbone: Backbone, head: HeadConfig) -> Learner:
        """The model methods train: maps a batch to ``Output(logits, features, targets)``, targets -100
        where no loss is taken. Keep it as ``self.learner``: ``inputs`` may need it."""
        raise NotImplementedError

    def inputs(self, task: Task, split: str) -> Inputs:
        """A task's examples ("train" or "test") as model inputs."""
        raise NotImplementedError

    def start(self, method: "Method", folder: Path) -> None:
        """Called once before the first task (and again on resume), with the run's checkpoint folder."""

    def evaluate(self, method: "Method", seen: int, record: bool = True) -> Rows:
        """One row per matrix after training through the first ``seen`` tasks (0: the baseline); with
        ``record=False`` (a method's variant) the kind's own records (``state``) are left as they are."""
        raise NotImplementedError

    def results(self, matrices: dict[str, dict]) -> dict:
        """The kind's own keys of results.json, given the finished matrices."""
        return {}
