"""forgetlab inside your own training script: ``ForgettingCallback`` for a Hugging Face ``Trainer`` or a
TRL ``SFTTrainer``.

The callback follows the tasks of a forgetlab config's ``data`` section (a stream) and its general
ability (``eval.retention``, ``eval.general``) while the user's trainer trains. Every ``trainer.train()``
call trains the stream's next task; the callback then measures every task and general ability,
exactly as ``forgetlab run`` does after a task, and writes what a run writes: ``results.json`` (the rows
so far, status ``running`` until the stream's last task is trained), ``report.html``, ``config.yaml``
and a store row. Between task ends it also measures at the trainer's epoch ends, evaluations or saves
(``every``): the ``training_curve`` of results.json, and the numbers sent to the trainer's own loggers
(TensorBoard, W&B, MLflow, ... through ``trainer.log``) once the callback is ``attach``-ed to it.

The callback never changes the training: it draws nothing from the random generators (their states
are restored after each measurement) and gives the model back in the mode it found it.
"""
from __future__ import annotations

import json
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from transformers import TrainerCallback

from ..config import Config, dump_config
from ..engine import Engine, default_run_dir
from ..errors import UserError
from ..experiment import load_config
from ..kinds import kind_class
from ..loggers import open_loggers
from ..models.backbones import wrap_causal_lm
from ..models.causal_lm import IGNORE_INDEX
from ..report import write_report
from ..runtime import write_json
from ..store import Store
from ..train.batching import epoch_batches

EVENTS = ("epoch", "evaluate", "save")      # the trainer's events the callback can measure at (and every_steps)
FOLLOWED_KINDS = ("instruction", "language_modeling")


class ForgettingCallback(TrainerCallback):
    """Measure what a Trainer's model forgets of a stream's tasks and its general ability.

    ``config``: a forgetlab config (YAML path, dict or Config) naming the tasks (``data``), general
    ability (``eval``), seed and trackers (``log``); its ``backbone`` is a record (default: the model's
    name); ``model``, ``tokenizer``: what the trainer trains; ``out``: the run folder (default
    ``runs/<name>-<hash>``); ``store``: the SQLite store (default ``<out>/../forgetlab.db``);
    ``every``: the trainer's events that also measure (``epoch``, ``evaluate``, ``save``); ``every_steps``:
    also every this many optimizer steps."""

    def __init__(self, config: str | Path | dict | Config, model: torch.nn.Module, tokenizer, *,
                 out: str | Path | None = None, store: str | Path | None = None, every: tuple[str, ...] = ("epoch",),
                 every_steps: int | None = None, overrides: dict[str, Any] | None = None):
        unknown = sorted(set(every) - set(EVENTS))
        if unknown:
            raise UserError(f"every: {', '.join(unknown)} is not an event the callback measures at; "
                            f"use {', '.join(EVENTS)}")
        self.cfg = _load(config, overrides, model)
        if kind_class(self.cfg.data.scenario).name not in FOLLOWED_KINDS:
            raise UserError(f"data.scenario: {self.cfg.data.scenario} needs a head forgetlab trains; the callback "
                            f"follows {' and '.join(FOLLOWED_KINDS)} streams of a causal LM")
        if self.cfg.method["name"] != "seq":
            raise UserError(f"method.name: the trainer trains, so the callback takes no method "
                            f"(got {self.cfg.method['name']}); leave it out or set seq")
        if every_steps is not None and every_steps < 1:
            raise UserError(f"every_steps: expected a positive number of steps, got {every_steps}")
        self.model, self.every, self.every_steps = model, set(every), every_steps
        with _kept_random_state():
            backbone = wrap_causal_lm(model, tokenizer, self.cfg.backbone, self.cfg.backbone.name)
            self.engine = Engine(self.cfg, backbone=backbone)
        self.out = Path(out) if out else default_run_dir(self.cfg)
        self.store = Store(Path(store) if store else self.out.parent / "forgetlab.db")
        self.trainer = None
        self.state: dict | None = None
        self.loggers: list = []
        self._task_start: tuple[int, float, float] | None = None   # step, clock and eval seconds at train()

    @classmethod
    def for_tasks(cls, tasks: list[str] | dict[str, Any], model: torch.nn.Module, tokenizer, *,
                  general: dict | None = None, out: str | Path = "runs/callback", seed: int = 0,
                  **kwargs) -> "ForgettingCallback":
        """A callback over instruction tasks given directly: built-in names or files (a list), or data sets
        by name (a dict of ``{"prompt", "response"[, "options"]}`` rows, or of ``{"train": rows, "test":
        rows}`` such as a ``DatasetDict``), written as JSONL under ``<out>/tasks``; ``general``: the
        ``eval.retention`` section (e.g. ``{"qa": "mmlu", "max_items": 100, "corpus": None}``)."""
        out = Path(out)
        sources = list(tasks) if not isinstance(tasks, dict) else [_write_task(out / "tasks", name, rows)
                                                                   for name, rows in tasks.items()]
        config = {"seed": seed, "data": {"scenario": "instruction", "sequence": sources}}
        if general is not None:
            config["eval"] = {"retention": general}
        return cls(config, model, tokenizer, out=out, **kwargs)

    # -- what a user calls ---------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.engine.stream.tasks]

    @property
    def next_task(self) -> str | None:
        """The task the next ``trainer.train()`` trains (None: every task is trained)."""
        done = self.state["completed"] if self.state else 0
        return self.tasks[done] if done < len(self.tasks) else None

    def attach(self, trainer) -> "ForgettingCallback":
        """Add the callback to ``trainer`` (once) and send its numbers to the trainer's loggers."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    def train_dataset(self, task: str | int):
        """A task's training examples as TRL's pre-tokenized prompt-completion rows (``input_ids``,
        ``completion_mask``: 1 where the loss is taken), tokenized as ``forgetlab run`` tokenizes them and
        laid out in the batches it draws for that task (epochs or ``max_steps``, the seed, length
        grouping), so a trainer reading them in order (``matching_arguments``) takes the same steps."""
        task = self._task(task)
        train = self.cfg.train
        if train.packing:
            raise UserError("train.packing: packed rows have no pre-tokenized TRL form; turn it off to follow a trainer")
        inputs = self.engine.method.training_inputs(task, self.engine.stream.tasks[: task.index + 1])
        if len(inputs) % train.batch_size:
            raise UserError(f"data: task '{task.name}' has {len(inputs)} training examples, not a multiple of "
                            f"train.batch_size {train.batch_size}: a trainer's batches would cut them otherwise; "
                            "set data.max_train_per_task to a multiple")
        batches = run_batches(len(inputs), train, self.cfg.seed * 1_000_003 + task.index,
                              [len(t) for t in inputs.tokens] if train.group_by_length else None)
        return sft_dataset(inputs.tokens, inputs.targets, batches)

    def matching_arguments(self) -> dict[str, Any]:
        """``TrainingArguments`` (or ``SFTConfig``) keywords that train as the config's ``train`` section:
        with ``train_dataset``'s rows, a trainer takes the steps ``forgetlab run`` takes (fused AdamW at
        ``lr_backbone``, constant rate, no warm-up, the same clipping and batches)."""
        train = self.cfg.train
        if train.weight_decay:
            raise UserError("train.weight_decay: a Trainer spares biases and norms from decay and forgetlab does "
                            "not; set it to 0 to train alike")
        return {"learning_rate": train.lr_backbone, "weight_decay": 0.0, "lr_scheduler_type": "constant",
                "warmup_steps": 0, "max_grad_norm": train.grad_clip or 0.0, "num_train_epochs": 1,
                "per_device_train_batch_size": train.batch_size, "gradient_accumulation_steps": train.grad_accum,
                "train_sampling_strategy": "sequential", "optim": "adamw_torch_fused",
                "bf16": train.precision == "bf16", "seed": self.cfg.seed}

    def _task(self, task: str | int):
        tasks = self.engine.stream.tasks
        if isinstance(task, int) and 0 <= task < len(tasks):
            return tasks[task]
        if task in self.tasks:
            return tasks[self.tasks.index(task)]
        raise UserError(f"task: {task!r} is not a task of the stream ({', '.join(self.tasks)})")

    # -- the trainer's events ------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and _inner(model) is not _inner(self.model):
            raise UserError("ForgettingCallback: the trainer trains another model than the one the callback follows")
        if self.next_task is None:
            raise UserError(f"ForgettingCallback: all {len(self.tasks)} tasks of the stream are trained; "
                            "a further trainer.train() has no task to follow")
        if self.state is None:
            self._start(state.is_world_process_zero)
        task = self.engine.stream.tasks[self.state["completed"]]
        self.engine.learner.begin_task(task)
        self._task_start = (state.global_step, time.perf_counter(), self.state["eval_s"])

    def on_step_end(self, args, state, control, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self._curve_point("steps", state)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._curve_point("epoch", state)

    def on_evaluate(self, args, state, control, **kwargs):
        self._curve_point("evaluate", state)

    def on_save(self, args, state, control, **kwargs):
        self._curve_point("save", state)

    def on_train_end(self, args, state, control, **kwargs):
        """The task is trained: every task's row and general ability, results.json, report, store."""
        st, engine = self.state, self.engine
        task = engine.stream.tasks[st["completed"]]
        step0, clock0, eval0 = self._task_start
        rows = self._measure(task.index + 1)
        st["rows"].append(rows)
        st["completed"] = task.index + 1
        losses = [e["loss"] for e in state.log_history if "loss" in e and e.get("step", 0) > step0]
        seconds = time.perf_counter() - clock0 - (st["eval_s"] - eval0)
        st["train_s"] += seconds
        st["log"].append({"task": task.name, "steps": state.global_step - step0, "loss": losses[-1] if losses else None,
                          "train_s": seconds, "global_step": state.global_step})
        st["curve"].append({"task": task.name, "step": state.global_step, "epoch": state.epoch, "event": "train_end",
                            "values": rows, "retention": st["retention"][-1] if engine.retention else None})
        self._report(state, "train_end", task.name, rows)
        if state.is_world_process_zero:
            primary = next(iter(engine.kind.matrices))
            self._notify("task", task.index + 1, self.tasks, rows[primary], losses[-1] if losses else float("nan"))
            self._write()

    # -- measuring and writing -----------------------------------------------------------------
    def _start(self, main: bool) -> None:
        """The first train(): the run's records, then every task and general ability before training."""
        engine, cfg = self.engine, self.cfg
        self.state = {"run_id": _run_id(cfg), "config_hash": cfg.hash(), "completed": 0, "rows": [], "baseline": None,
                      "retention": [], "variants": {}, "kind": {}, "log": [], "train_s": 0.0, "eval_s": 0.0,
                      "curve": [], "main": main}
        if main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "results.json").unlink(missing_ok=True)
            dump_config(cfg, self.out / "config.yaml")
            self.store.begin(self.state["run_id"], cfg.hash(), cfg.to_dict(), str(self.out))
            self.loggers = open_loggers(cfg.log, self.out, cfg.name or self.state["run_id"], cfg.to_dict(), self.state)
        self._started = time.perf_counter()
        with self._measuring():
            engine._begin(self.state, self.out / "checkpoint")

    def _measure(self, seen: int) -> dict:
        with self._measuring():
            return self.engine._evaluate(seen, self.state)

    @contextmanager
    def _measuring(self) -> Iterator[None]:
        """Evaluate the model in eval mode, without gradients, leaving the random generators and the
        model's mode as they were; the seconds count as evaluation."""
        start, training = time.perf_counter(), self.model.training
        self.model.eval()
        try:
            with _kept_random_state(), torch.no_grad():
                yield
        finally:
            self.model.train(training)
            self.state["eval_s"] += time.perf_counter() - start

    def _curve_point(self, event: str, state) -> None:
        """A measurement inside a task (at the trainer's ``event``): the training curve, not the matrix."""
        if (event not in self.every and event != "steps") or self.state is None or self._task_start is None:
            return
        curve = self.state["curve"]
        if state.global_step >= state.max_steps or (curve and curve[-1]["step"] == state.global_step
                                                    and curve[-1]["task"] == self.next_task):
            return                      # the task's end measures it

        task, engine = self.engine.stream.tasks[self.state["completed"]], self.engine
        with self._measuring():          # the kind's records (kept answers) and G hold task ends only
            rows = engine.kind.evaluate(engine.method, task.index + 1, record=False)
            retention = engine.retention.measure(engine.learner.backbone, engine.device) if engine.retention else None
        curve.append({"task": task.name, "step": state.global_step, "epoch": state.epoch, "event": event,
                      "values": rows, "retention": retention})
        self._report(state, event, task.name, rows, retention)

    def _report(self, state, event: str, task: str, rows: dict, retention: dict | None = None) -> None:
        """Send a measurement to the trainer's loggers (``attach``), else to its log history."""
        seen = self.tasks.index(task) + 1
        logs = {}
        for name, row in rows.items():
            if row is None:
                continue
            logs |= {f"forgetlab/{name}/{t}": v for t, v in zip(self.tasks, row)}
            logs[f"forgetlab/{name}/seen_average"] = float(np.mean(row[:seen]))
        if retention is None and self.engine.retention:
            retention = self.state["retention"][-1]
        for probe, value in (retention or {}).items():
            if isinstance(value, (int, float)):
                logs[f"forgetlab/general/{probe}"] = value
        if self.trainer is not None:
            self.trainer.log(logs)
        else:
            state.log_history.append({**logs, "step": state.global_step, "forgetlab_event": event})

    def _write(self) -> None:
        """results.json (the rows so far), the report, the store row: completed after the last task."""
        st, engine = self.state, self.engine
        timing = {"train_s": st["train_s"], "eval_s": st["eval_s"], "total_s": time.perf_counter() - self._started}
        results = engine._results(st, timing)
        done = st["completed"] == len(self.tasks)
        results["status"] = "completed" if done else "running"
        results["training_curve"] = st["curve"]
        results["integration"] = {"callback": type(self).__name__,
                                  "trainer": type(self.trainer).__name__ if self.trainer is not None else None,
                                  "tasks_trained": st["completed"]}
        write_report(results, self.out / "report.html")
        write_json(self.out / "results.json", results)
        if done:
            self.store.complete(st["run_id"], results)
            self._notify("finish", results)

    def _notify(self, event: str, *args) -> None:
        for logger in self.loggers:
            try:
                getattr(logger, event)(*args)
            except Exception as exc:
                print(f"warning: {type(logger).__name__}.{event}: {type(exc).__name__}: {exc}")


def run_batches(n: int, train, seed: int, lengths: list[int] | None) -> list[list[int]]:
    """The index batches ``train.loop.train_task`` draws for ``n`` examples with ``seed``: epoch after
    epoch (each reshuffled by the same generator) until its steps are taken."""
    per_epoch = -(-n // train.batch_size)
    micro = (train.max_steps or -(-train.epochs * per_epoch // train.grad_accum)) * train.grad_accum
    generator = torch.Generator().manual_seed(seed)
    batches: list[list[int]] = []
    while len(batches) < micro:
        batches += [b.tolist() for b in epoch_batches(n, train.batch_size, generator, lengths)][: micro - len(batches)]
    return batches


def sft_dataset(tokens: list[list[int]], targets: list[list[int]], batches: list[list[int]]):
    """TRL's pre-tokenized prompt-completion form, rows in batch order: ``input_ids`` and
    ``completion_mask`` (1 where forgetlab takes a loss)."""
    from datasets import Dataset

    rows = [i for batch in batches for i in batch]
    return Dataset.from_dict({"input_ids": [tokens[i] for i in rows],
                              "completion_mask": [[int(t != IGNORE_INDEX) for t in targets[i]] for i in rows]})


def _load(config, overrides: dict | None, model) -> Config:
    """The config, its backbone named after the model when it names none."""
    from ..config import read_yaml

    source = config.to_dict() if isinstance(config, Config) else config
    raw, _, _ = read_yaml(source, overrides)
    if "backbone" in raw:
        return load_config(source, overrides)               # errors name the file's lines
    name = getattr(getattr(_inner(model), "config", None), "name_or_path", "") or type(_inner(model)).__name__
    return load_config({**raw, "backbone": {"name": name}})


def _write_task(folder: Path, name: str, rows) -> str:
    """A data set given in memory as an instruction task file (rows) or folder (train and test rows)."""
    def write(path: Path, examples) -> None:
        path.write_text("".join(json.dumps(dict(row)) + "\n" for row in examples))

    if hasattr(rows, "keys") and "train" in rows.keys():
        missing = [split for split in ("train", "test") if split not in rows.keys()]
        if missing:
            raise UserError(f"tasks: data set '{name}' has a train split but no {missing[0]} split")
        (folder / name).mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            write(folder / name / f"{split}.jsonl", rows[split])
        return str(folder / name)
    folder.mkdir(parents=True, exist_ok=True)
    write(folder / f"{name}.jsonl", rows)
    return str(folder / f"{name}.jsonl")


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _run_id(cfg: Config) -> str:
    from ..engine import _new_run_id

    return _new_run_id(cfg)


@contextmanager
def _kept_random_state() -> Iterator[None]:
    """Run a block without disturbing the training's random generators (Python, NumPy, torch, CUDA)."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
