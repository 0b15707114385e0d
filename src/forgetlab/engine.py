"""One run, for every kind of task: config -> kind (stream, learner, inputs, evaluation) and method ->
for each task (hooks, train, evaluate, checkpoint, trackers) -> matrices, metrics, outputs, store.
An online run (``online:``) goes through ``train/online.py``'s loop instead of ``_run_tasks``.

The engine knows a kind only through ``kinds/base.py``'s interface and a method only through
``methods/base.py``'s hooks."""
from __future__ import annotations

import shutil
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from . import checkpoint, distributed
from ._version import __version__
from .config import Config, dump_config
from .errors import UserError
from .eval.metrics import matrix_metrics, metric_direction
from .eval.retention import Retention
from .kinds import kind_class
from .loggers import open_loggers
from .methods import REGISTRY, Method, method_class
from .methods.base import ANY_KIND, Context
from .models.backbones import Backbone, build_backbone
from .report import write_report
from .runtime import environment, peak_rss_mib, pick_device, seed_everything, write_json
from .store import Store
from .train import online
from .train.loop import TrainStats, train_task

console = Console(stderr=True, soft_wrap=True)


def default_run_dir(cfg: Config, root: str | Path = "runs") -> Path:
    return Path(root) / f"{cfg.name or cfg.method['name']}-{cfg.hash()[:10]}"


def supports(method: type[Method], kind: str) -> bool:
    return ANY_KIND in method.kinds or kind in method.kinds


class Engine:
    """Holds what a run builds once (kind with its stream, learner, method) and runs it task by task.

    ``backbone``: a model built elsewhere (``integrations/``: a Trainer's own), used as it is instead of
    ``cfg.backbone``'s; its process evaluates alone, whatever launched it (the trainer spreads its training)."""

    def __init__(self, cfg: Config, backbone: Backbone | None = None):
        self.cfg = cfg
        if cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if backbone is None:
            self.device = pick_device(cfg.train.device)
            self.ranks = distributed.setup(cfg.train.distributed, self.device.type)
        else:
            self.device, self.ranks = next(backbone.parameters()).device, distributed.Ranks()
        if self.ranks.active:
            self.device = self.ranks.accelerator.device      # this rank's GPU (cuda:LOCAL_RANK) or the CPU
            console.quiet = not self.ranks.main
        seed_everything(cfg.seed)
        kind_cls, method_cls = kind_class(cfg.data.scenario), method_class(cfg.method["name"])
        if self.ranks.active:
            _check_distributed(cfg, method_cls)
        if not supports(method_cls, kind_cls.name):
            usable = sorted(n for n, m in REGISTRY.items() if supports(m, kind_cls.name))
            raise UserError(f"method.name: {method_cls.name} does not support {kind_cls.name} streams "
                            f"(data.scenario: {cfg.data.scenario}); use one of {', '.join(usable)}")
        if cfg.train.packing and not kind_cls.packs:
            raise UserError(f"train.packing: packs prompt -> response examples; not available on {kind_cls.name} streams")
        self.kind = kind_cls(cfg, self.device)
        self.stream = self.kind.stream
        method_cfg = method_cls.Config.model_validate(cfg.method)
        backbone = backbone or build_backbone(cfg.backbone)
        general = "retention" if cfg.eval.retention else "general" if cfg.eval.general else None
        if general and not backbone.causal:
            raise UserError(f"eval.{general}: measures a causal LM's general ability; {backbone.source} is an encoder")
        self.learner = self.kind.build_learner(backbone, method_cls.head_config(method_cfg, cfg.head))
        ctx = Context(self.stream, self.kind.inputs, self.device, backbone.pad_id, cfg.train, cfg.seed, self.kind)
        self.method: Method = method_cls(method_cfg, self.learner, ctx)
        self.learner.to(self.device)          # after the method: it may add modules (LoRA, adapters)
        if cfg.online:
            online.check(cfg, kind_cls.name, self.method)
        self.retention = Retention(cfg.eval.retention, cfg.eval.general) if general else None

    # -- the run -----------------------------------------------------------------------------
    def run(self, out_dir: Path, store: Store, resume: bool = False) -> dict:
        """Every rank runs the stream; only the main rank writes (over several processes the run
        folder must be one every rank reaches, for ``--resume``). Any rank that fails marks the run failed."""
        cfg, stream, ranks = self.cfg, self.stream, self.ranks
        ckpt_dir = out_dir / "checkpoint"
        state = checkpoint.read_state(ckpt_dir) if resume else None
        if state and state["config_hash"] != cfg.hash():
            raise UserError(f"{out_dir}: --resume with a different config than the one this run started with")
        if state:
            state = checkpoint.restore(ckpt_dir, self.learner, self.method)
            console.print(f"resuming {out_dir} after task {state['completed']}/{len(stream.tasks)}")
        else:
            if ranks.main and ckpt_dir.exists():
                shutil.rmtree(ckpt_dir)
            state = {"run_id": ranks.broadcast(_new_run_id(cfg)), "config_hash": cfg.hash(), "completed": 0, "rows": [],
                     "baseline": None, "retention": [], "variants": {}, "kind": {}, "log": [], "train_s": 0.0, "eval_s": 0.0}
        run_id = state["run_id"]
        if ranks.main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "results.json").unlink(missing_ok=True)
            dump_config(cfg, out_dir / "config.yaml")
            store.begin(run_id, cfg.hash(), cfg.to_dict(), str(out_dir))
        ranks.barrier()
        self.loggers = []
        try:
            if ranks.main:
                self.loggers = open_loggers(cfg.log, out_dir, cfg.name or run_id, cfg.to_dict(), state)
            results = online.run(self, state, ckpt_dir) if cfg.online else self._run_tasks(state, ckpt_dir)
            if ranks.main:
                write_report(results, out_dir / "report.html")
                write_json(out_dir / "results.json", results)
                store.complete(run_id, results)
        except BaseException as exc:
            with ranks.terms_held():       # a peer's death brings the launcher's SIGTERM: not before this is written
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                out_dir.mkdir(parents=True, exist_ok=True)
                write_json(out_dir / "results.json", {"forgetlab_version": __version__, "run_id": run_id,
                                                       "status": "failed", "error": traceback.format_exc(limit=5),
                                                       "config": cfg.to_dict()})
                store.fail(run_id, f"{type(exc).__name__}: {message}")
                self._notify("close", failed=True)
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

    def _evaluate(self, seen: int, state: dict) -> dict:
        """Every matrix's row after the first ``seen`` tasks, and general ability where asked for; after a
        task, the same for each of the method's variants (kept apart, in ``state["variants"]``)."""
        rows = self.kind.evaluate(self.method, seen)
        if self.retention:
            state["retention"].append(self.retention.measure(self.learner.backbone, self.device))
        if seen:
            state.setdefault("variants", {})
            for value in self.method.variants():
                point = state["variants"].setdefault(str(value), {"value": value, "rows": [], "retention": []})
                point["rows"].append(self.kind.evaluate(self.method, seen, record=False))
                if self.retention:
                    point["retention"].append(self.retention.measure(self.learner.backbone, self.device))
        return rows

    def _begin(self, state: dict, ckpt_dir: Path) -> None:
        """Before the first task (and on resume): the kind's records and start, then the baseline."""
        self.kind.state = state["kind"]
        self.kind.start(self.method, ckpt_dir)
        if state["baseline"] is None:
            t0 = time.perf_counter()
            state["baseline"] = self._evaluate(0, state)
            state["eval_s"] += time.perf_counter() - t0

    def _run_tasks(self, state: dict, ckpt_dir: Path) -> dict:
        cfg, stream, learner, method, kind = self.cfg, self.stream, self.learner, self.method, self.kind
        T = len(stream.tasks)
        t_start, elapsed_before = time.perf_counter(), state.get("total_s", 0.0)
        self._begin(state, ckpt_dir)
        primary = next(iter(kind.matrices))
        for task in stream.tasks[state["completed"]:]:
            seed_everything(cfg.seed * 1_000_003 + task.index)
            learner.begin_task(task)
            method.before_task(task)
            backbone_trained = not learner.backbone_frozen
            stats = self._train(task)
            t0 = time.perf_counter()
            rows = self._evaluate(task.index + 1, state)
            eval_s = time.perf_counter() - t0
            state["rows"].append(rows)
            state["train_s"] += stats.seconds
            state["eval_s"] += eval_s
            state["completed"] = task.index + 1
            state["log"].append({"task": task.name, "steps": stats.steps, "examples": stats.examples,
                                 "loss": stats.loss, "train_s": stats.seconds, "eval_s": eval_s,
                                 "trainable_parameters": stats.trainable, "method": method.task_summary(task)})
            seen = "  ".join(f"{kind.matrices[name][0]}(seen) {np.mean(row[: task.index + 1]):.4f}"
                             for name, row in rows.items() if row is not None)
            console.print(f"task {task.index + 1:>2}/{T} {task.name:<14} {stats.steps:>5} steps  "
                          f"loss {stats.loss:.4f}  {stats.examples / max(stats.seconds, 1e-9):7.0f} ex/s  "
                          f"train {stats.seconds:6.1f}s  eval {eval_s:5.1f}s  {seen}")
            self._notify("task", task.index + 1, [t.name for t in stream.tasks], rows[primary], stats.loss)
            state["total_s"] = elapsed_before + time.perf_counter() - t_start
            self.ranks.check_same(f"{method.name}'s state after {task.name}", method.state())
            weights = self.ranks.full_state(learner) if self.ranks.sharded else None    # every rank gathers
            if self.ranks.main:
                checkpoint.save(ckpt_dir, task.index, learner, method, state, backbone_changed=backbone_trained,
                                weights=weights)
            self.ranks.barrier()
        timing = {"train_s": state["train_s"], "eval_s": state["eval_s"],
                  "total_s": elapsed_before + time.perf_counter() - t_start}
        return self._results(state, timing)

    def _train(self, task) -> TrainStats:
        """Train on ``task`` (what the method trains on for it), then let the method consolidate."""
        data = self.method.training_inputs(task, self.stream.tasks[: task.index + 1])
        stats = train_task(self.learner, self.method, data, self.cfg.train, seed=self.cfg.seed * 1_000_003 + task.index,
                           device=self.device, pad_id=self.learner.backbone.pad_id,
                           label=f"task {task.index + 1}/{len(self.stream.tasks)} {task.name}", console=console)
        self.method.after_task(task)
        return stats

    def _results(self, state: dict, timing: dict) -> dict:
        """results.json: the matrices the kind measured (each with its baseline, direction and metrics),
        each also under its older flat keys (``accuracy_matrix``, ``baseline_accuracy``, ...), the flat
        metrics, general ability, the kind's own keys, timing, resources and the environment."""
        matrices = self._matrices(state["rows"], state["baseline"])
        metrics = {k: v for m in matrices.values() for k, v in m["metrics"].items()}
        flat = {}
        for name, m in matrices.items():
            flat[f"{name}_matrix"], flat[f"baseline_{name}"] = m["values"], m["baseline"]
        return {
            "forgetlab_version": __version__, "run_id": state["run_id"], "status": "completed",
            "config": self.cfg.to_dict(), "kind": self.kind.name, "scenario": self.stream.scenario,
            "tasks": [t.name for t in self.stream.tasks],
            "backbone": self.learner.backbone.describe("random" if self.cfg.backbone.arch else self.cfg.backbone.init),
            **flat,
            **self.kind.results(matrices),
            "metrics": metrics,
            "metric_directions": {key: metric_direction(key, m["direction"]) for m in matrices.values() for key in m["metrics"]},
            "matrices": matrices,
            "retention": self.retention.record(state["retention"]) if self.retention else None,
            "variants": self._variants(state),
            "timing": timing, "task_log": state["log"],
            "resources": {**resources(self.device), "trainable_parameters": max((e.get("trainable_parameters", 0)
                                                                                  for e in state["log"]), default=0),
                          "method_state_mib": _mib(self.method.held())},
            "environment": {**environment(self.cfg.seed, self.device), "world_size": self.ranks.world,
                            "distributed": self.ranks.strategy},
        }

    def _matrices(self, all_rows: list[dict], baseline: dict) -> dict:
        """Each matrix the kind measured, with its baseline, direction and metrics; with fewer rows than
        tasks (a run followed part way, ``integrations/``), the metrics of the tasks trained so far."""
        primary = next(iter(self.kind.matrices))
        matrices = {}
        for name, (key, direction) in self.kind.matrices.items():
            rows = [r.get(name) for r in all_rows]
            if any(row is None for row in rows):
                continue
            k, before = len(rows), baseline.get(name)
            matrices[name] = {"values": rows, "baseline": before, "direction": direction,
                              "metrics": matrix_metrics([row[:k] for row in rows], before and before[:k], key, direction,
                                                        primary=name == primary)}
        return matrices

    def _variants(self, state: dict) -> dict | None:
        """The method's variants, each as a run's matrices, metrics and general ability (None: it has none)."""
        if not state.get("variants"):
            return None
        points = []
        for point in sorted(state["variants"].values(), key=lambda p: p["value"]):
            matrices = self._matrices(point["rows"], state["baseline"])
            retention = self.retention.record(state["retention"][:1] + point["retention"]) if self.retention else None
            points.append({"value": point["value"], "matrices": matrices, "retention": retention,
                           "metrics": {k: v for m in matrices.values() for k, v in m["metrics"].items()}})
        return {"parameter": self.method.variant_parameter, "value": self.method.variant_value, "points": points}


def _check_distributed(cfg: Config, method: type[Method]) -> None:
    """Refuse in one line what does not run over several processes yet."""
    if method.not_distributed:
        raise UserError(f"method.name: {method.name} does not run over several processes ({method.not_distributed}); "
                        "run it in one process")
    if cfg.train.distributed == "fsdp" and not method.sharded:
        usable = sorted(n for n, m in REGISTRY.items() if m.sharded)
        raise UserError(f"train.distributed: fsdp shards the weights, which {method.name} reads or changes outside "
                        f"the training step; use ddp, or one of {', '.join(usable)}")
    if cfg.online:
        raise UserError("online: an online stream runs in one process; start it without a launcher")


def resources(device: torch.device) -> dict:
    """Peak memory: the process's resident set (its whole life) and, on CUDA, allocated device memory
    with the device's name and size; over several processes, the largest over the ranks and each rank's."""
    cuda = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    out = {"peak_rss_mib": peak_rss_mib(), "peak_cuda_mib": cuda}
    if device.type == "cuda":
        out |= {"cuda_device": torch.cuda.get_device_name(device),
                "cuda_total_mib": torch.cuda.get_device_properties(device).total_memory / 2**20}
    ranks = distributed.current()
    if ranks.active:
        per_rank = ranks.gather((out["peak_rss_mib"], cuda))
        out |= {"peak_rss_mib": max(r for r, _ in per_rank), "peak_rss_mib_per_rank": [r for r, _ in per_rank]}
        if cuda is not None:
            out |= {"peak_cuda_mib": max(c for _, c in per_rank), "peak_cuda_mib_per_rank": [c for _, c in per_rank]}
    return out


def _mib(tensors: dict[str, torch.Tensor]) -> float:
    """The tensors' size, a storage shared by several counted once."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors.values()}
    return sum(storages.values()) / 2**20


def _new_run_id(cfg: Config) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{cfg.hash()[:8]}"
