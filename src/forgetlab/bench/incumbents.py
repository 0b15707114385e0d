"""Benchmark 5, against the incumbents: a whole continual-learning stream run by forgetlab, and the
same stream run the way TRACE-, O-LoRA- or LLaMA-Factory-based tool kits run it, with the Hugging
Face ``transformers.Trainer``: one ``Trainer.train()`` per task, then ``Trainer.predict`` on the
test set of every task seen so far.

What makes the comparison fair:

- the same stream (``build_stream`` on the same data config), the same backbone loaded from the same
  folder, mean pooling, the same ``max_length``, and the same head: one linear layer over all the
  stream's classes whose not-yet-seen classes are masked to -inf (forgetlab's growing head, which
  keeps every class's rows in one matrix and predicts only classes seen so far);
- the same optimisation: a fresh fused AdamW per task (Trainer's default ``adamw_torch_fused``, and
  forgetlab's) with the backbone and head at their own learning rates, the same weight decay,
  gradient clipping, constant learning rate, batch size and exactly the same number of optimizer
  steps per task (checked after every run);
- the same methods: ``ewc`` with forgetlab's defaults (lambda, "true" Fisher drawn from the model's
  own predictions, one example at a time, on every training example of the task), written as a
  ``Trainer.compute_loss`` override plus a Fisher pass after each task; the baseline keeps one
  penalty term per past task as the paper writes it, where forgetlab folds them into one quadratic
  of the same value (part of what is measured);
  ``replay`` as a reservoir memory of the same size whose batch joins every training batch inside
  ``compute_loss``, so the optimizer takes the same number of steps on the same amount of data;
- the same evaluation: batch size 128, every task seen so far after every task; tasks not seen yet
  score 0 on both sides without running the model (their classes are masked, so no prediction can
  be right);
- the same process, timed alike: each side's whole stream (model load, tokenization, training and
  all evaluations) by ``time.perf_counter``, the sides alternating over the rounds, the median kept.

The Trainer side is written as a competent user would: ``DataCollatorWithPadding``, no checkpoints,
no logging, no progress bars, ``report_to="none"``. forgetlab keeps doing what a run always does
(its report, checkpoints after every task and a row in the store), so its time is not flattered.
What differs by design: dropout draws, batch orders and the head's random initialisation (same
distribution, different draws), and the baseline's optimizer holds the whole head, so weight decay
also shrinks the rows of classes not seen yet (by a factor 1 - lr_head * weight_decay per step)
where forgetlab leaves them untouched until their task.
The figure is trainer seconds / forgetlab seconds (target >= 1.5); both accuracy matrices are
returned so a reader can see the accuracies agree within run-to-run noise.
"""
from __future__ import annotations

import math
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

import forgetlab

from ..config import Config

from ..experiment import load_config
from ..data.stream import Task, build_stream
from ..methods.ewc import EWCConfig
from ..models.backbones import resolve_model_path
from . import avalanche_side
from .common import MINILM, interleaved, median

TARGET = 1.5
METHODS = ("seq", "ewc", "replay")
REPLAY_SIZE = 200


def setting(quick: bool) -> dict:
    """The forgetlab config of the ``seq`` run; the other methods change only ``method``."""
    data = {"name": "clinc150", "scenario": "class_incremental", "classes_per_task": 10, "order_seed": 0}
    data.update({"max_tasks": 2, "max_train_per_class": 8, "max_test_per_class": 10} if quick
                else {"max_tasks": 5, "max_train_per_class": 30})
    return {"seed": 0,
            "backbone": {"name": MINILM, "pooling": "mean", "max_length": 32},
            "data": data,
            # forgetlab's growing head: one weight matrix over all the stream's classes, those of tasks
            # not seen yet masked to -inf (``preallocate: true`` would let them be predicted)
            "head": {"preallocate": False},
            "method": {"name": "seq"},
            "train": {"epochs": 1, "batch_size": 16, "eval_batch_size": 128, "lr_backbone": 5e-5,
                      "lr_head": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0, "progress": False}}


def method_config(name: str) -> dict:
    if name == "replay":
        return {"name": name, "replay": {"size": REPLAY_SIZE, "strategy": "reservoir"}}
    return {"name": name}


def steps_per_task(cfg: Config, task: Task) -> int:
    """forgetlab's loop: ``max_steps``, else ``epochs`` passes over the task's training set."""
    return cfg.train.max_steps or cfg.train.epochs * math.ceil(len(task.train_texts) / cfg.train.batch_size)


# -- forgetlab -----------------------------------------------------------------------------------
def run_forgetlab(config: dict) -> tuple[list[list[float]], list[int]]:
    """The accuracy matrix of one forgetlab run and its optimizer steps per task."""
    torch.manual_seed(config["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        res = forgetlab.run(config, out=Path(tmp) / "run", store=Path(tmp) / "forgetlab.db")
    return res.accuracy_matrix.tolist(), [entry["steps"] for entry in res.raw["task_log"]]


# -- the Trainer baseline ------------------------------------------------------------------------
class Classifier(nn.Module):
    """Encoder + mean pooling + one linear layer over all classes; classes not yet seen are masked."""

    def __init__(self, path: str, num_classes: int):
        super().__init__()
        self.encoder = AutoModel.from_pretrained(path)
        self.head = nn.Linear(self.encoder.config.hidden_size, num_classes)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, input_ids, attention_mask, labels=None):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        logits = self.head(pooled).masked_fill(~self.seen, float("-inf"))
        if labels is None:
            return {"logits": logits}
        return {"loss": F.cross_entropy(logits, labels), "logits": logits}


class ContinualTrainer(Trainer):
    """Trainer whose loss adds a replay batch (``memory``) and EWC's penalty (``ewc_terms``)."""

    def __init__(self, *args, memory: list[dict], memory_batch_size: int, ewc_terms: list, ewc_lam: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory, self.memory_batch_size = memory, memory_batch_size
        self.ewc_terms, self.ewc_lam = ewc_terms, ewc_lam

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        logits = outputs["logits"]
        if self.memory:
            drawn = random.sample(self.memory, min(self.memory_batch_size, len(self.memory)))
            replayed = self._prepare_inputs(self.data_collator(drawn))
            logits = torch.cat([logits, model(replayed["input_ids"], replayed["attention_mask"])["logits"]])
            labels = torch.cat([labels, replayed["labels"]])
        loss = F.cross_entropy(logits, labels)
        if self.ewc_terms:
            loss = loss + self.ewc_lam / 2 * ewc_penalty(model, self.ewc_terms)
        return (loss, outputs) if return_outputs else loss


def ewc_penalty(model: nn.Module, terms: list[tuple[dict, dict]]) -> torch.Tensor:
    """sum over past tasks of sum_i F_i (theta_i - theta*_i)^2."""
    params = dict(model.named_parameters())
    return sum((fisher[n] * (params[n] - anchor[n]).pow(2)).sum() for fisher, anchor in terms for n in fisher)


def fisher_term(model: nn.Module, examples: list[dict], collator) -> tuple[dict, dict]:
    """Diagonal "true" Fisher on ``examples`` (one at a time, labels drawn from the model) and the anchor."""
    model.eval()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    device = next(model.parameters()).device
    for example in examples:
        batch = collator([{k: v for k, v in example.items() if k != "labels"}])
        logp = F.log_softmax(model(**{k: v.to(device) for k, v in batch.items()})["logits"], dim=-1)
        y = torch.multinomial(logp.detach().exp(), 1).squeeze(1)
        grads = torch.autograd.grad(logp.gather(1, y[:, None]).sum(), list(params.values()), allow_unused=True)
        for n, g in zip(params, grads):
            if g is not None:              # the encoder's pooler is not used
                fisher[n] += g.pow(2)
    fisher = {n: f / len(examples) for n, f in fisher.items()}
    return fisher, {n: p.detach().clone() for n, p in params.items()}


def reservoir_add(memory: list[dict], seen: int, examples: list[dict], size: int) -> int:
    """Offer ``examples`` (in random order) to a reservoir of ``size``; returns the examples offered so far."""
    for i in torch.randperm(len(examples)).tolist():
        seen += 1
        if len(memory) < size:
            memory.append(examples[i])
        else:
            j = int(torch.randint(seen, ()))
            if j < size:
                memory[j] = examples[i]
    return seen


def tokenized(tokenizer, texts: list[str], labels: list[int] | None, max_length: int) -> list[dict]:
    enc = tokenizer(texts, truncation=True, max_length=max_length, return_token_type_ids=False)
    rows = [{"input_ids": ids, "attention_mask": mask} for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    if labels is not None:
        for row, y in zip(rows, labels):
            row["labels"] = y
    return rows


def run_trainer(cfg: Config, method: str, workdir: str) -> tuple[list[list[float]], list[int]]:
    """Sequential fine-tuning with one ``Trainer`` per task; returns R and the optimizer steps per task."""
    torch.manual_seed(cfg.seed)                        # the head's initialisation
    stream = build_stream(cfg.data, cfg.seed)
    path = resolve_model_path(cfg.backbone.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = Classifier(path, stream.num_classes)
    collator = DataCollatorWithPadding(tokenizer)
    ewc_lam = EWCConfig(name="ewc").lam                # forgetlab's default lambda
    train_sets = [tokenized(tokenizer, t.train_texts, t.train_labels, cfg.backbone.max_length) for t in stream.tasks]
    test_sets = [tokenized(tokenizer, t.test_texts, None, cfg.backbone.max_length) for t in stream.tasks]
    memory, offered, ewc_terms = [], 0, []
    R, steps = [], []
    for task in stream.tasks:
        model.seen[task.classes] = True
        args = TrainingArguments(
            output_dir=workdir, max_steps=steps_per_task(cfg, task), per_device_train_batch_size=cfg.train.batch_size,
            per_device_eval_batch_size=cfg.train.eval_batch_size, weight_decay=cfg.train.weight_decay,
            max_grad_norm=cfg.train.grad_clip, lr_scheduler_type="constant", warmup_steps=0,
            seed=cfg.seed + task.index, report_to="none", save_strategy="no", logging_strategy="no",
            disable_tqdm=True)
        optimizer = torch.optim.AdamW([{"params": model.encoder.parameters(), "lr": cfg.train.lr_backbone},
                                       {"params": model.head.parameters(), "lr": cfg.train.lr_head}],
                                      weight_decay=cfg.train.weight_decay, fused=True)   # Trainer's default kernel
        trainer = ContinualTrainer(model=model, args=args, train_dataset=train_sets[task.index], data_collator=collator,
                                   optimizers=(optimizer, None), ewc_terms=ewc_terms, ewc_lam=ewc_lam,
                                   memory=memory, memory_batch_size=cfg.train.batch_size)   # forgetlab's default
        trainer.train()
        steps.append(trainer.state.global_step)
        if method == "ewc":
            ewc_terms.append(fisher_term(model, train_sets[task.index], collator))
        if method == "replay":
            offered = reservoir_add(memory, offered, train_sets[task.index], REPLAY_SIZE)
        row = []
        for t in stream.tasks:
            if t.index > task.index:
                row.append(0.0)            # its classes are masked: nothing can be right
                continue
            pred = trainer.predict(test_sets[t.index]).predictions.argmax(-1)
            row.append(float((pred == np.array(t.test_labels)).mean()))
        R.append(row)
    return R, steps


# -- the benchmark -------------------------------------------------------------------------------
def compare(config: dict, rounds: int) -> dict:
    """Time forgetlab and the Trainer baseline on one config, alternately; one row of the table."""
    cfg = load_config(config)
    method = cfg.method["name"]
    out: dict[str, tuple] = {}

    def run_ours() -> None:
        out["forgetlab"] = run_forgetlab(config)

    def run_theirs() -> None:
        with tempfile.TemporaryDirectory() as workdir:
            out["trainer"] = run_trainer(cfg, method, workdir)

    sides = {"forgetlab": run_ours, "trainer": run_theirs}
    if avalanche_side.available():
        sides["avalanche"] = lambda: out.__setitem__("avalanche", avalanche_side.run_avalanche(cfg, method, REPLAY_SIZE))
    times = interleaved(sides, rounds, warmup=False)
    (ours, our_steps), (theirs, their_steps) = out["forgetlab"], out["trainer"]
    if our_steps != their_steps:
        raise RuntimeError(f"{method}: optimizer steps per task differ: forgetlab {our_steps}, trainer {their_steps}")
    forgetlab_s, trainer_s = median(times["forgetlab"]), median(times["trainer"])
    row = {"method": method, "forgetlab_s": forgetlab_s, "trainer_s": trainer_s, "speedup": trainer_s / forgetlab_s,
           "target": TARGET, "forgetlab_acc": float(np.mean(ours[-1])), "trainer_acc": float(np.mean(theirs[-1])),
           "forgetlab_R": ours, "trainer_R": theirs, "steps_per_task": our_steps[0], "times": times}
    if "avalanche" in out:
        R, steps = out["avalanche"]
        avalanche_s = median(times["avalanche"])
        row.update({"avalanche_s": avalanche_s, "speedup_avalanche": avalanche_s / forgetlab_s,
                    "avalanche_acc": float(np.mean(R[-1])), "avalanche_R": R, "avalanche_steps_per_task": steps})
    return row


def warm_up() -> None:
    """One untimed run of each side on the quick ``seq`` setting, so that neither side's first timed
    run pays the process's one-time costs (lazy imports, allocator, the model files' page cache)."""
    config = setting(quick=True)
    run_forgetlab(config)
    with tempfile.TemporaryDirectory() as workdir:
        run_trainer(load_config(config), "seq", workdir)
    if avalanche_side.available():
        avalanche_side.run_avalanche(load_config(config), "seq", REPLAY_SIZE)


def run(quick: bool = False, rounds: int | None = None) -> dict:
    """Compare the two sides for every method in ``METHODS``; each row also holds every round's seconds."""
    rounds = rounds or (1 if quick else 2)
    base = setting(quick)
    previous = os.environ.get("FORGETLAB_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FORGETLAB_CACHE_DIR"] = cache
        try:
            warm_up()
            rows = [compare({**base, "method": method_config(m)}, rounds) for m in METHODS]
        finally:
            if previous is None:
                os.environ.pop("FORGETLAB_CACHE_DIR")
            else:
                os.environ["FORGETLAB_CACHE_DIR"] = previous
    data = base["data"]
    speedups = [r["speedup"] for r in rows] + [r["speedup_avalanche"] for r in rows if "speedup_avalanche" in r]
    return {"name": "incumbents", "figure": min(speedups), "target": f">= {TARGET}", "met": min(speedups) >= TARGET,
            "setting": f"{data['max_tasks']} CLINC150 tasks, MiniLM, {', '.join(METHODS)}; against the Trainer"
                       + (" and Avalanche" if avalanche_side.available() else " (Avalanche not installed)"),
            "config": {**base, "methods": list(METHODS), "replay": {"size": REPLAY_SIZE, "strategy": "reservoir"},
                        "ewc": EWCConfig(name="ewc").model_dump(exclude={"name", "replay"}), "rounds": rounds,
                        "torch_threads": torch.get_num_threads()},
            "rows": rows,
            "notes": [
                f"{data['max_tasks']} class-incremental tasks of {data['classes_per_task']} CLINC150 classes; "
                f"times are whole streams (load, train, evaluate), median of {rounds} alternating round(s) "
                "after one untimed warm-up run of each side",
                "Trainer side: one Trainer.train() per task with a fresh AdamW (as forgetlab), then Trainer.predict "
                "on every task seen so far; unseen tasks score 0 on both sides without running the model",
                "forgetlab side also writes its report, a checkpoint after every task and a store row",
                "EWC: the baseline sums one penalty term per past task; forgetlab keeps one quadratic of the same "
                "value, so its penalty's cost does not grow with the tasks",
                "dropout draws and batch orders differ between the sides, so accuracies agree within noise, "
                "not exactly",
                "Avalanche side (where avalanche-lib is installed): its Naive, EWC (mini-batch Fisher, one term per "
                "experience) and a reservoir ReplayPlugin; see bench/avalanche_side.py",
            ]}
