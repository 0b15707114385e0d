"""The method interface: hooks the engine calls around its one training loop.

Subclasses set ``name`` (the config name; setting it registers the class), optionally a
``Config`` with their own keys, and override only the hooks they change. Every method can
compose a replay memory (``method: {name: ewc, replay: {size: 150}}``): the base class fills it
after each task and mixes a memory batch into every training batch. A subclass that overrides
``after_task``, ``state`` or ``load_state`` calls ``super()`` to keep that working. ``kinds`` names
the task kinds a method supports (``kinds/``; ``ANY_KIND``: every kind, as the base does: it only
needs a learner's ``Output``); the engine checks it once.

On an online stream (``online:``, ``train/online.py``) there are no task boundaries: ``after_task`` is
never called; ``observe`` sees every batch after its step (the base offers it to the memory: online ER)
and a method that is not ``task_free`` gets ``boundary`` every ``online.boundary_every`` steps instead.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .. import distributed
from ..config import HeadConfig, Section, TrainConfig
from ..data.stream import Stream, Task
from ..errors import UserError
from ..models.learner import Learner, Output
from ..models.causal_lm import IGNORE_INDEX
from ..train.batching import Inputs, make_batch
from .components.memory import Memory, ReplayConfig
from .components.retrieval import RetrievalConfig, RetrievalMemory

REGISTRY: dict[str, type["Method"]] = {}
ANY_KIND = "*"


class MethodConfig(Section):
    name: str
    replay: ReplayConfig | None = None     # compose an episodic memory with any method
    retrieval: RetrievalConfig | None = None   # instruction streams: stored examples as demonstrations


@dataclass
class Context:
    """What the engine lends a method: the stream, each task's inputs, and how to batch them."""

    stream: Stream
    inputs: Callable[[Task, str], Inputs]      # (task, "train"|"test") -> Inputs
    device: torch.device
    pad_id: int
    train: TrainConfig
    seed: int = 0
    kind: object | None = None                 # the run's task kind (kinds/), for kind-specific services

    def batch(self, inputs: Inputs) -> dict:
        return make_batch(inputs, torch.arange(len(inputs)), self.pad_id, self.device)

    def batches(self, inputs: Inputs, size: int) -> list[dict]:
        return [make_batch(inputs, torch.arange(i, min(i + size, len(inputs))), self.pad_id, self.device)
                for i in range(0, len(inputs), size)]

    def training_sample(self, task: Task, limit: int | None) -> Inputs:
        """The task's training inputs, or ``limit`` of them drawn at random."""
        data = self.inputs(task, "train")
        return data if limit is None else data.subset(torch.randperm(len(data))[:limit])

    def examples(self, task_ids: torch.Tensor, example_ids: torch.Tensor) -> Inputs:
        """The training inputs of the named examples, in the given order."""
        parts, where = [], []
        for t in task_ids.unique().tolist():
            rows = (task_ids == t).nonzero().flatten()
            parts.append(self.inputs(self.stream.tasks[t], "train").subset(example_ids[rows]))
            where.append(rows)
        merged = Inputs.concat(parts)
        return merged.subset(torch.cat(where).argsort())


def joint_cross_entropy(outs: list[Output]) -> torch.Tensor:
    """Cross-entropy over the rows of several outputs together (-100 targets: no loss); in a run over
    several processes, this rank's share of the mean over every rank's rows (``distributed.global_mean``)."""
    logits = torch.cat([o.logits.flatten(0, -2) for o in outs])
    targets = torch.cat([o.targets.flatten() for o in outs])
    count = int((targets != IGNORE_INDEX).sum())
    loss = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX) if count else logits.sum() * 0.0
    return distributed.current().global_mean(loss, count)


class Method:
    """Sequential training with cross-entropy: the base every method builds on."""

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    kinds: ClassVar[frozenset[str]] = frozenset({ANY_KIND})    # the task kinds it supports
    task_free: ClassVar[bool] = False      # works on an online stream without task boundaries
    # runs over several processes (``distributed.py``): every rank holds the same state; None, or why not
    not_distributed: ClassVar[str | None] = None
    # trains with FSDP (``train.distributed: fsdp``): it reads and changes the weights only through the
    # training step's forward and loss (no penalty on them, no edits between tasks, no modules added)
    sharded: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            REGISTRY[cls.name] = cls

    def __init__(self, cfg: MethodConfig, learner: Learner, ctx: Context):
        self.cfg, self.learner, self.ctx = cfg, learner, ctx
        self.memory = Memory(cfg.replay.size, cfg.replay.strategy) if cfg.replay else None
        self.retrieval = self._retrieval_memory(cfg.retrieval, ctx)

    def _retrieval_memory(self, cfg: RetrievalConfig | None, ctx: Context) -> RetrievalMemory | None:
        if cfg is None:
            return None
        if getattr(ctx.kind, "name", None) != "instruction":
            raise UserError("method.retrieval: puts stored examples into prompts; only on instruction streams "
                            "(data.scenario: instruction; on classification, see knn_memory)")
        if cfg.variants and type(self).variants is not Method.variants:
            raise UserError(f"method.retrieval.variants: {self.name} evaluates its own variants; "
                            "retrieval's cannot be added to them")
        if cfg.k in cfg.variants:
            raise UserError(f"method.retrieval.variants: further k other than retrieval.k ({cfg.k}), not {cfg.k}")
        if cfg.variants:
            self.variant_parameter, self.variant_value = "retrieval.k", cfg.k
        return RetrievalMemory(cfg, ctx.stream, ctx.device)

    @classmethod
    def head_config(cls, cfg: MethodConfig, head: HeadConfig) -> HeadConfig:
        """The head this method needs (e.g. SEQ* asks for a cosine head)."""
        return head

    def before_task(self, task: Task) -> None:
        """Called after the task's classes are activated, before training on it."""

    def training_inputs(self, task: Task, seen: list[Task]) -> Inputs:
        """What this task trains on (``seen`` includes ``task``): its own training set."""
        return self.ctx.inputs(task, "train")

    def loss(self, batch: dict, out: Output) -> torch.Tensor:
        """Cross-entropy of the learner's rows against their targets (-100: no loss), over the batch
        joined by a memory batch if there is a memory, plus ``penalty``."""
        outs, _ = self.with_memory(out)
        return joint_cross_entropy(outs) + self.penalty(batch, out)

    def with_memory(self, out: Output) -> tuple[list[Output], dict | None]:
        """The batch's output joined by a memory batch's (if there is a memory), and that batch."""
        memory = self.memory_batch()
        return ([out] if memory is None else [out, self.learner(memory)]), memory

    def penalty(self, batch: dict, out: Output) -> torch.Tensor:
        """A regulariser added to the loss (EWC, MAS, LwF override this)."""
        return out.logits.new_zeros(())

    def param_groups(self, train: TrainConfig) -> list[dict]:
        """What the optimizer trains, at which learning rate: the backbone at ``lr_backbone``, what the
        learner has besides (a head) at ``lr_head``."""
        backbone = [p for p in self.learner.backbone.parameters() if p.requires_grad]
        own = [p for p in self.learner.own_parameters() if p.requires_grad]
        return [{"params": backbone, "lr": train.lr_backbone}, {"params": own, "lr": train.lr_head}]

    def after_backward(self) -> None:
        """Called between ``backward`` and the optimizer step (e.g. to mask gradients)."""

    def after_step(self) -> None:
        """Called right after each optimizer step (e.g. to update a running average of weights)."""

    def after_task(self, task: Task) -> None:
        """Called after training on the task, before it is evaluated: offers its examples to the memory."""
        if self.memory is not None:
            data = self.ctx.inputs(task, "train")
            order = torch.randperm(len(data))
            self.memory.add(data.task_ids[order], data.example_ids[order], data.labels[order])
        if self.retrieval is not None:
            self.retrieval.add(task)

    def observe(self, inputs: Inputs) -> None:
        """Online streams: called after each step with the batch's examples; offers them to the memory."""
        if self.memory is not None:
            self.memory.add(inputs.task_ids, inputs.example_ids, inputs.labels)

    def boundary(self, inputs: Inputs) -> None:
        """Online streams: a pseudo-boundary every ``online.boundary_every`` steps, with the examples
        trained on since the last one (a method that needs boundaries consolidates here)."""

    def task_summary(self, task: Task) -> dict:
        """Figures of the method's own on the task just trained (e.g. a penalty's mean), recorded in
        results.json's ``task_log`` under ``method``; called after the task is evaluated (a retrieval
        memory's cost: entries, index size, time per query). A subclass merges ``super()``'s."""
        return self.retrieval.cost() if self.retrieval is not None else {}

    def variants(self) -> Iterator[float]:
        """Other versions of the model evaluated after each task besides the one the stream carries on
        with (weight averaging's alpha curve): set the model to each, yield its ``variant_parameter``
        value, and restore the model after the last. By default, a retrieval memory's further ``k``."""
        if self.retrieval is None:
            return
        for k in self.retrieval.cfg.variants:
            self.retrieval.k = k
            yield k
        self.retrieval.k = self.retrieval.cfg.k

    def demonstrations(self, task: Task, examples: list) -> list[list[str]] | None:
        """Per test example of an instruction task, the demonstrations put before its prompt (nearest
        first), or None: the prompt as it is. A retrieval memory's, by default."""
        return self.retrieval.demonstrations(examples) if self.retrieval is not None else None

    def assemble(self, demonstrations: list[str], prompt: str) -> str:
        """The prompt with (some of) its demonstrations before it, as the model reads it."""
        return self.retrieval.assemble(demonstrations, prompt)

    variant_parameter: ClassVar[str | None] = None     # what distinguishes the variants, e.g. "alpha"
    variant_value: float | None = None                 # this run's own value of it

    def eval_task(self, task: Task) -> None:
        """Called before a task's test set is encoded (e.g. to select that task's adapter)."""

    @property
    def per_task_encoder(self) -> bool:
        """Whether ``eval_task`` changes the encoder between tasks; if not, the engine encodes every
        task's test set in one length-sorted pass."""
        return False

    def state(self) -> dict[str, torch.Tensor]:
        """Tensors resume must restore (saved as safetensors)."""
        out = self.memory.state() if self.memory is not None else {}
        return out | (self.retrieval.state() if self.retrieval is not None else {})

    def held(self) -> dict[str, torch.Tensor]:
        """Every tensor the method keeps besides the model (results.json ``resources.method_state_mib``):
        what resume restores, unless a method holds more."""
        return self.state()

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""
        if self.memory is not None:
            self.memory.load_state(state)
        if self.retrieval is not None:
            self.retrieval.load_state(state)

    # -- helpers for subclasses ----------------------------------------------------------------
    def memory_batch(self) -> dict | None:
        """A batch of examples drawn uniformly from the memory, or None if it is empty."""
        if self.memory is None or len(self.memory) == 0:
            return None
        ranks = distributed.current()
        drawn = self.memory.sample(self.cfg.replay.batch_size or self.ctx.train.batch_size)
        if ranks.sharded and len(drawn) < ranks.world:     # FSDP: a forward is a collective every rank joins
            raise UserError(f"replay.batch_size: with train.distributed: fsdp a memory batch needs an example for "
                            f"each of the {ranks.world} ranks; this one has {len(drawn)}")
        idx = ranks.shard(drawn)
        if len(idx) == 0:                   # this rank's share of a memory batch smaller than the world
            return None
        batch = self.ctx.batch(self.ctx.examples(self.memory.task_ids[idx], self.memory.example_ids[idx]))
        batch["memory_index"] = idx
        return batch

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.learner.named_parameters() if p.requires_grad}

