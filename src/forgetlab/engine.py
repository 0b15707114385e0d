"""One run: config -> stream -> for each task (hooks, train, evaluate) -> metrics, outputs, store."""
from __future__ import annotations

import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from . import __version__, checkpoint
from .config import Config, dump_config
from .data.sources import cache_dir
from .data.stream import Stream, Task, build_stream
from .errors import UserError
from .eval.diagnoser import Diagnoser
from .eval.evaluate import evaluate
from .eval.metrics import all_metrics
from .loggers import open_loggers
from .methods import Method, method_class
from .methods.base import Context
from .models.backbones import LSTMEncoder, build_backbone
from .models.learner import Learner
from .report import write_report
from .runtime import environment, peak_rss_mib, pick_device, seed_everything, write_json
from .store import Store
from .train.batching import Inputs
from .train.features import FeatureCache, encode, encode_layers
from .train.loop import TrainStats, train_task

console = Console(stderr=True, soft_wrap=True)
CKA_REFERENCE = "cka-reference.safetensors"      # the fixed probe set's features under the initial backbone


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    return Path(root) / f"{cfg.name or cfg.method['name']}-{cfg.hash()[:10]}"


def make_engine(cfg: Config) -> "Engine":
    """The engine the stream needs: this module's for classification, ``lm_engine``'s for language modelling."""
    if cfg.data.scenario == "language_modeling":
        from .lm_engine import LMEngine  # late import: it builds on Engine

        return LMEngine(cfg)
    return Engine(cfg)


class Engine:
    """Holds what a run builds once (stream, learner, method) and runs it task by task."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        self.device = pick_device(cfg.train.device)
        seed_everything(cfg.seed)
        self.stream: Stream = build_stream(cfg.data, cfg.seed)
        method_cls = method_class(cfg.method["name"])
        method_cfg = method_cls.Config.model_validate(cfg.method)
        head_cfg = method_cls.head_config(method_cfg, cfg.head)
        backbone = build_backbone(cfg.backbone)
        if method_cls.needs_causal_lm and not backbone.causal:
            raise UserError(f"method.name: {method_cls.name} needs a causal LM backbone; "
                            f"{backbone.source} is an encoder (use backbone.arch: gpt2 or a causal LM)")
        if cfg.eval.probe_layers:
            if isinstance(backbone.model, LSTMEncoder):
                raise UserError("eval.probe_layers: the LSTM backbone has no per-layer hidden states to probe")
            depth = len(backbone.layer_groups()) - 1          # hidden states: embeddings + one per layer
            bad = [k for k in cfg.eval.probe_layers if not -(depth + 1) <= k <= depth]
            if bad:
                raise UserError(f"eval.probe_layers: {bad} out of range for a {depth}-layer backbone (0..{depth}, or negative)")
        if cfg.eval.retention and not backbone.causal:
            raise UserError(f"eval.retention: measures a causal LM's general ability; {backbone.source} is an encoder")
        self.learner = Learner(backbone, head_cfg, self.stream, seed=cfg.seed)
        ctx = Context(self.stream, self.inputs, self.device, backbone.pad_id, cfg.train, cfg.seed)
        self.method: Method = method_cls(method_cfg, self.learner, ctx)
        self.learner.to(self.device)          # after the method: it may add modules (LoRA, adapters)
        self._tokens: dict[tuple[int, str], list[list[int]]] = {}
        self._features: dict[tuple[int, str], torch.Tensor] | None = None
        self._step_features: dict[tuple[int, str], torch.Tensor] = {}    # encoded since the backbone last trained
        self._layer_memo: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
        self._cache: FeatureCache | None = None

    # -- inputs ------------------------------------------------------------------------------
    def _texts(self, task: Task, split: str) -> list[str]:
        return task.train_texts if split == "train" else task.test_texts

    def inputs(self, task: Task, split: str) -> Inputs:
        labels = torch.tensor(task.train_labels if split == "train" else task.test_labels)
        ids = (labels, torch.full_like(labels, task.index), torch.arange(len(labels)))
        if self.learner.backbone_frozen:
            return Inputs(*ids, features=self.frozen_features()[(task.index, split)])
        key = (task.index, split)
        if key not in self._tokens:
            self._tokens[key] = self.learner.backbone.tokenize(self._texts(task, split))
        return Inputs(*ids, tokens=self._tokens[key])

    def frozen_features(self) -> dict[tuple[int, str], torch.Tensor]:
        """Features of every example of the stream under the frozen backbone, via the cache."""
        if self._features is None:
            backbone = self.learner.backbone
            root = cache_dir() / "features" if self.cfg.train.feature_cache else None
            self._cache = FeatureCache(root, backbone.fingerprint())
            keys = [(t.index, s) for t in self.stream.tasks for s in ("train", "test")]
            texts = [self._texts(self.stream.tasks[i], s) for i, s in keys]
            flat = self._cache.get(backbone, [x for group in texts for x in group],
                                   self.cfg.train.eval_batch_size, self.device)
            self._features = dict(zip(keys, torch.split(flat, [len(g) for g in texts])))
        return self._features

    def features(self, tasks: list[Task], split: str, limit: int | None = None) -> list[torch.Tensor]:
        """Each task's features under the current backbone (its first ``limit`` examples if given),
        kept until the backbone next trains."""
        if self.learner.backbone_frozen:
            return [self.frozen_features()[(t.index, split)][:limit] for t in tasks]
        todo = [t for t in tasks if (t.index, split) not in self._step_features]
        fresh = dict(zip((t.index for t in todo), self._encode_tasks(todo, split, limit)))
        for t in todo:
            if limit is None or limit >= len(self._texts(t, split)):
                self._step_features[(t.index, split)] = fresh[t.index]
        return [fresh[t.index] if t.index in fresh else self._step_features[(t.index, split)][:limit] for t in tasks]

    def _encode_tasks(self, tasks: list[Task], split: str, limit: int | None) -> list[torch.Tensor]:
        """Each task's features: task by task where the method switches encoders between tasks, else in
        one length-sorted pass over all their texts (fuller batches, less padding)."""
        texts = [self._texts(t, split)[:limit] for t in tasks]
        size, backbone = self.cfg.train.eval_batch_size, self.learner.backbone
        if self.method.per_task_encoder:
            out = []
            for t, group in zip(tasks, texts):
                self.method.eval_task(t)
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
            if (t.index, split) not in self._layer_memo:
                self.method.eval_task(t)
                self._layer_memo[(t.index, split)] = encode_layers(
                    self.learner.backbone, self._texts(t, split), layers, self.cfg.train.eval_batch_size, self.device)
        return {k: [self._layer_memo[(t.index, split)][k] for t in tasks] for k in layers}

    def test_features(self, tasks: list[Task]) -> list[torch.Tensor]:
        return self.features(tasks, "test")

    # -- the run -----------------------------------------------------------------------------
    def run(self, out_dir: Path, store: Store, resume: bool = False) -> dict:
        cfg, stream = self.cfg, self.stream
        ckpt_dir = out_dir / "checkpoint"
        state = checkpoint.read_state(ckpt_dir) if resume else None
        if state and state["config_hash"] != cfg.hash():
            raise UserError(f"{out_dir}: --resume with a different config than the one this run started with")
        if state:
            state = checkpoint.restore(ckpt_dir, self.learner, self.method)
            console.print(f"resuming {out_dir} after task {state['completed']}/{len(stream.tasks)}")
        else:
            if ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)
            state = {"run_id": _new_run_id(cfg), "config_hash": cfg.hash(), "completed": 0, "rows": [],
                     "class_rows": [], "baseline": None, "log": [], "train_s": 0.0, "eval_s": 0.0}
        run_id = state["run_id"]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").unlink(missing_ok=True)
        dump_config(cfg, out_dir / "config.yaml")
        store.begin(run_id, cfg.hash(), cfg.to_dict(), str(out_dir))
        self.loggers = []
        try:
            self.loggers = open_loggers(cfg.log, out_dir, cfg.name or run_id, cfg.to_dict(), state)
            results = self._run_tasks(state, ckpt_dir, out_dir)
            write_report(results, out_dir / "report.html")
            write_json(out_dir / "results.json", results)
            store.complete(run_id, results)
        except BaseException as exc:
            self._notify("close", failed=True)
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            store.fail(run_id, f"{type(exc).__name__}: {message}")
            write_json(out_dir / "results.json", {"forgetlab_version": __version__, "run_id": run_id,
                                                   "status": "failed", "error": traceback.format_exc(limit=5),
                                                   "config": cfg.to_dict()})
            raise
        self._notify("finish", results)
        return results

    def _notify(self, event: str, *args, **kwargs) -> None:
        """Pass an event to the trackers; a tracker that fails is a warning, never a failed run."""
        for logger in self.loggers:
            try:
                getattr(logger, event)(*args, **kwargs)
            except Exception as exc:
                console.print(f"warning: {type(logger).__name__}.{event}: {type(exc).__name__}: {exc}")

    def _run_tasks(self, state: dict, ckpt_dir: Path, out_dir: Path) -> dict:
        cfg, stream, learner, method = self.cfg, self.stream, self.learner, self.method
        T = len(stream.tasks)
        t_start, elapsed_before = time.perf_counter(), state.get("total_s", 0.0)
        diagnoser = Diagnoser(cfg.eval, stream, cfg.seed, state.setdefault("diagnostics", {}))
        reference_file = ckpt_dir / CKA_REFERENCE
        if state["baseline"] is None:
            t0 = time.perf_counter()
            state["baseline"], _ = evaluate(learner, stream.tasks, self.test_features, self.device)
            diagnoser.before_stream(learner, self.device)
            if cfg.eval.cka:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
                save_file({"features": diagnoser.cka_features(self.features)}, str(reference_file))
            state["eval_s"] += time.perf_counter() - t0
        cka_reference = load_file(str(reference_file))["features"] if cfg.eval.cka else None
        for task in stream.tasks[state["completed"]:]:
            seed_everything(cfg.seed * 1_000_003 + task.index)
            learner.begin_task(task)
            method.before_task(task)
            backbone_trained = not learner.backbone_frozen
            self._step_features, self._layer_memo = {}, {}
            if backbone_trained:
                self._features = None       # the backbone will change: cached features go stale
            stats = self._train(task)
            t0 = time.perf_counter()
            row, class_row = evaluate(learner, stream.tasks, self.test_features, self.device, seen=task.index + 1)
            diagnoser.step(task, learner, self.features, self.device, cka_reference, self.layer_features)
            eval_s = time.perf_counter() - t0
            state["rows"].append(row)
            state["class_rows"].append(class_row)
            state["train_s"] += stats.seconds
            state["eval_s"] += eval_s
            state["completed"] = task.index + 1
            seen_acc = float(np.mean(row[: task.index + 1]))
            state["log"].append({"task": task.name, "steps": stats.steps, "examples": stats.examples,
                                 "loss": stats.loss, "train_s": stats.seconds, "eval_s": eval_s})
            console.print(f"task {task.index + 1:>2}/{T} {task.name:<14} {stats.steps:>5} steps  "
                          f"loss {stats.loss:.4f}  {stats.examples / max(stats.seconds, 1e-9):7.0f} ex/s  "
                          f"train {stats.seconds:6.1f}s  eval {eval_s:5.1f}s  acc(seen) {seen_acc:.4f}")
            self._notify("task", task.index + 1, [t.name for t in stream.tasks], row, stats.loss)
            state["total_s"] = elapsed_before + time.perf_counter() - t_start
            checkpoint.save(ckpt_dir, task.index, learner, method, state, backbone_changed=backbone_trained)
        R = np.array(state["rows"])
        probe_matrix, diagnostics = diagnoser.results(R)
        metrics = all_metrics(R, state["baseline"])
        if probe_matrix is not None:
            metrics["probe_acc"] = diagnostics["summary"]["probe_acc"]
        results = {
            **self._results_head(state),
            "accuracy_matrix": R.tolist(),
            "probe_matrix": probe_matrix,
            "baseline_accuracy": state["baseline"],
            "class_names": stream.class_names,
            "class_train_counts": stream.class_train_counts(),
            "per_class_accuracy": state["class_rows"],
            "metrics": metrics,
            "diagnostics": diagnostics,
            **self._results_tail(state, {"train_s": state["train_s"], "eval_s": state["eval_s"],
                                         "total_s": elapsed_before + time.perf_counter() - t_start}),
        }
        return results

    def _train(self, task: Task) -> TrainStats:
        """Train on ``task`` (what the method trains on for it), then let the method consolidate."""
        data = self.method.training_inputs(task, self.stream.tasks[: task.index + 1])
        stats = train_task(self.learner, self.method, data, self.cfg.train, seed=self.cfg.seed * 1_000_003 + task.index,
                           device=self.device, pad_id=self.learner.backbone.pad_id,
                           label=f"task {task.index + 1}/{len(self.stream.tasks)} {task.name}", console=console)
        self.method.after_task(task)
        return stats

    def _results_head(self, state: dict) -> dict:
        """The first keys of results.json, the same for every kind of stream."""
        return {"forgetlab_version": __version__, "run_id": state["run_id"], "status": "completed",
                "config": self.cfg.to_dict(), "scenario": self.stream.scenario,
                "tasks": [t.name for t in self.stream.tasks],
                "backbone": self.learner.backbone.describe("random" if self.cfg.backbone.arch else self.cfg.backbone.init)}

    def _results_tail(self, state: dict, timing: dict) -> dict:
        """The last keys of results.json: timing, the task log, resources and the environment."""
        return {"timing": timing, "task_log": state["log"], "resources": resources(self.device),
                "environment": environment(self.cfg.seed, self.device)}


def resources(device: torch.device) -> dict:
    """Peak memory: the process's resident set (its whole life) and, on CUDA, allocated device memory."""
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"peak_rss_mib": peak_rss_mib(), "peak_cuda_mib": cuda}


def _new_run_id(cfg: Config) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{cfg.hash()[:8]}"
