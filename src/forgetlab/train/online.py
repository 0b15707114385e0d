"""Online, task-free streams (``online:``): one pass over every task's training examples in blurry
segments (``data/online.py``), one optimizer step per batch, an anytime evaluation every
``online.eval_every`` steps, and at each segment's end a full evaluation (a row of the run's usual
matrices) and a checkpoint. docs/design.md, "Online streams", states the contract.

The learner and the method meet a task when its first example arrives (``learner.begin_task``, then
``method.before_task``); the optimizer is then rebuilt over what trains now, keeping the state of the
parameters it already trained. Each batch is offered to ``method.observe`` after its step; a method that
is not ``task_free`` gets ``method.boundary`` every ``online.boundary_every`` steps.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.console import Console

from .. import checkpoint
from ..config import Config
from ..data.online import blurry_split, composition
from ..errors import UserError
from ..eval.metrics import anytime_auc
from ..runtime import seed_everything
from .batching import make_batch
from .loop import Stepper, TrainStats, set_gradient_checkpointing

if TYPE_CHECKING:
    from ..engine import Engine
    from ..methods.base import Method

KINDS = ("classification", "instruction")
console = Console(stderr=True, soft_wrap=True)


def has_boundary(method: "Method") -> bool:
    """Whether the method does something at a pseudo-boundary (overrides ``boundary``)."""
    from ..methods.base import Method

    return type(method).boundary is not Method.boundary


def check(cfg: Config, kind: str, method: "Method") -> None:
    """Refuse, before training, what an online stream cannot run: one line naming the key."""
    if kind not in KINDS:
        raise UserError(f"online: runs {' and '.join(KINDS)} streams, not {kind} (data.scenario: {cfg.data.scenario})")
    if cfg.train.epochs != 1:
        raise UserError(f"train.epochs: an online stream is one pass over its examples; set it to 1 (got {cfg.train.epochs})")
    if cfg.train.max_steps is not None:
        raise UserError("train.max_steps: an online stream is one pass over its examples; leave it unset")
    if cfg.train.grad_accum != 1:
        raise UserError("train.grad_accum: an online stream takes one optimizer step per batch; set it to 1")
    if method.retrieval is not None:
        raise UserError("method.retrieval: stores each task's examples at the task's end; not available on an online stream")
    if method.per_task_encoder:
        raise UserError("method.per_task: one module per task needs task boundaries; not available on an online stream")
    if method.task_free:
        return
    if not has_boundary(method):
        raise UserError(f"method.name: {method.name} needs task boundaries and has no pseudo-boundary; "
                        "use a task-free method (seq, replay, lora, ...)")
    if cfg.online.boundary_every is None:
        raise UserError(f"method.name: {method.name} needs task boundaries; set online.boundary_every (steps) "
                        "or use a task-free method (seq, replay, lora, ...)")


class OnlineLoop:
    """The stream's training state across segments (``state["online"]``, checkpointed with the run):
    steps, examples, the tasks met, the examples since the last boundary, and the anytime curve."""

    def __init__(self, engine: "Engine", state: dict, folder: Path):
        self.engine, self.cfg, self.state = engine, engine.cfg, state
        self.stepper = Stepper(engine.learner, engine.method, engine.cfg.train, engine.device)
        if state.get("optimizer") and self.stepper.optimizer is not None:        # resumed
            saved = torch.load(folder / state["optimizer"], weights_only=True)
            self.stepper.optimizer.load_state_dict(saved)

    def segment(self, examples: list[tuple[int, int]]) -> tuple[TrainStats, float]:
        """Train on one segment, batch by batch in its order (a batch never crosses its end), with an
        anytime evaluation every ``eval_every`` steps but after its last batch (the segment's end has one);
        the training figures and the seconds its anytime evaluations took."""
        engine, cfg, st = self.engine, self.cfg, self.state
        learner, method, train = engine.learner, engine.method, cfg.train
        if not examples:
            return TrainStats(0, 0, float("nan"), 0.0), 0.0
        ids = torch.tensor(examples, dtype=torch.long)
        data = method.ctx.examples(ids[:, 0], ids[:, 1])
        pack = learner.backbone.max_length if train.packing else None
        start, eval_s, losses, steps = time.perf_counter(), 0.0, [], 0
        self._training(True)
        for first in range(0, len(data), train.batch_size):
            idx = torch.arange(first, min(first + train.batch_size, len(data)))
            chunk = data.subset(idx)
            self._arrive(chunk.task_ids.tolist())
            if self.stepper.optimizer is None:
                continue
            loss, _ = self.stepper.batch(make_batch(data, idx, learner.backbone.pad_id, engine.device, pack))
            method.observe(chunk)
            losses.append(loss)
            steps += 1
            st["step"] += 1
            st["examples"] += len(idx)
            every = cfg.online.boundary_every if has_boundary(method) else None
            if every:           # the examples since the last pseudo-boundary, for the next one
                st["pending"] += [[int(t), int(e)] for t, e in zip(chunk.task_ids, chunk.example_ids)]
            if every and st["step"] % every == 0:
                pending = torch.tensor(st["pending"], dtype=torch.long)
                self._training(False)        # as after a task: dropout off, no checkpointing
                method.boundary(method.ctx.examples(pending[:, 0], pending[:, 1]))
                self._training(True)
                st["pending"] = []
            if st["step"] % cfg.online.eval_every == 0 and idx[-1] + 1 < len(data):
                t0 = time.perf_counter()
                self._training(False)
                self.point(engine.kind.evaluate(method, learner.tasks_seen, record=False))
                self._training(True)
                eval_s += time.perf_counter() - t0
        self._training(False)
        return TrainStats(steps, len(data), sum(losses) / max(len(losses), 1),
                          time.perf_counter() - start - eval_s, sum(p.numel() for p in self.stepper.params)), eval_s

    def segment_end(self, rows: dict, last: bool) -> None:
        """The segment's full evaluation is the curve's point where one is due (and at the stream's end)."""
        st = self.state
        due = st["step"] % self.cfg.online.eval_every == 0 or last
        if st["step"] and due and st["step"] != st["last_point"]:
            self.point(rows)

    def point(self, rows: dict) -> None:
        """Add an anytime point: the rows, and the primary matrix's mean over the tasks met so far."""
        st, kind = self.state, self.engine.kind
        seen = self.engine.learner.tasks_seen
        rows = {name: row for name, row in rows.items() if row is not None}
        primary = next(iter(kind.matrices))
        value = float(np.mean(rows[primary][:seen]))
        st["curve"].append({"step": st["step"], "examples_seen": st["examples"], "tasks_seen": seen,
                            "rows": rows, "value": value})
        st["last_point"] = st["step"]
        console.print(f"  step {st['step']:>6}  {st['examples']:>7} examples  {seen} tasks  "
                                  f"{kind.matrices[primary][0]}(seen) {value:.4f}")

    def save_optimizer(self, folder: Path, index: int) -> None:
        """The optimizer's state beside the segment's checkpoint (named in ``state["optimizer"]``)."""
        if self.stepper.optimizer is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        name = f"optimizer-{index}.pt"
        torch.save(self.stepper.optimizer.state_dict(), folder / name)
        self.state["optimizer"] = name

    def drop_old_optimizers(self, folder: Path) -> None:
        """Delete the optimizer states of earlier segments (the checkpoint names the current one)."""
        for f in folder.glob("optimizer-*.pt"):
            if f.name != self.state["optimizer"]:
                f.unlink()

    def _arrive(self, task_ids: list[int]) -> None:
        """Meet each task whose first example is in this batch; then rebuild the optimizer."""
        learner, method, tasks = self.engine.learner, self.engine.method, self.engine.stream.tasks
        new = [t for t in dict.fromkeys(task_ids) if t not in self.state["begun"]]
        for t in new:
            learner.begin_task(tasks[t])
            method.before_task(tasks[t])
            self.state["begun"].append(t)
        if new:
            self.stepper.rebuild()
            self.engine.learner.train()

    def _training(self, on: bool) -> None:
        learner = self.engine.learner
        if self.cfg.train.gradient_checkpointing:
            set_gradient_checkpointing(learner, on)
        learner.train(on)


def run(engine: "Engine", state: dict, folder: Path) -> dict:
    """The online stream from the segment after ``state["completed"]``; results.json with ``online``."""
    cfg, stream, learner, method, kind = engine.cfg, engine.stream, engine.learner, engine.method, engine.kind
    T = len(stream.tasks)
    t_start, elapsed_before = time.perf_counter(), state.get("total_s", 0.0)
    engine._begin(state, folder)
    segments = blurry_split([len(kind.inputs(t, "train")) for t in stream.tasks], cfg.online.blurry, cfg.seed)
    counts = composition(segments, T)
    online = state.setdefault("online", {"step": 0, "examples": 0, "begun": [], "pending": [], "curve": [],
                                         "last_point": 0, "optimizer": None})
    loop = OnlineLoop(engine, online, folder)
    primary = next(iter(kind.matrices))
    for index in range(state["completed"], T):
        seed_everything(cfg.seed * 1_000_003 + index)
        frozen_before = learner.backbone_frozen
        stats, anytime_s = loop.segment(segments[index])
        t0 = time.perf_counter()
        rows = engine._evaluate(index + 1, state)
        loop.segment_end(rows, last=index == T - 1)
        eval_s = anytime_s + time.perf_counter() - t0
        state["rows"].append(rows)
        state["train_s"] += stats.seconds
        state["eval_s"] += eval_s
        state["completed"] = index + 1
        name = stream.tasks[index].name
        state["log"].append({"task": name, "segment": counts[index], "steps": stats.steps, "examples": stats.examples,
                             "loss": stats.loss, "train_s": stats.seconds, "eval_s": eval_s,
                             "trainable_parameters": stats.trainable, "method": method.task_summary(stream.tasks[index])})
        console.print(f"segment {index + 1:>2}/{T} {name:<14} {stats.steps:>5} steps  loss {stats.loss:.4f}  "
                             f"{kind.matrices[primary][0]}(seen) {np.mean(rows[primary][: learner.tasks_seen]):.4f}")
        engine._notify("task", index + 1, [t.name for t in stream.tasks], rows[primary], stats.loss)
        state["total_s"] = elapsed_before + time.perf_counter() - t_start
        loop.save_optimizer(folder, index)
        checkpoint.save(folder, index, learner, method, state,
                        backbone_changed=not (frozen_before and learner.backbone_frozen))
        loop.drop_old_optimizers(folder)
    timing = {"train_s": state["train_s"], "eval_s": state["eval_s"],
              "total_s": elapsed_before + time.perf_counter() - t_start}
    results = engine._results(state, timing)
    curve = online["curve"]
    results["metrics"]["a_auc"] = anytime_auc([p["value"] for p in curve])
    results["metric_directions"]["a_auc"] = "higher"
    results["online"] = {"blurry": cfg.online.blurry, "eval_every": cfg.online.eval_every,
                         "boundary_every": cfg.online.boundary_every, "segments": counts, "curve": curve,
                         "a_auc": results["metrics"]["a_auc"]}
    return results
