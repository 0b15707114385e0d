"""Each optimisation on and off, in the same process: what it buys on this machine.

- ``length_sorted_eval``: encoding test sets in batches of similar length (dynamic padding) against
  batches in data order padded to their longest text;
- ``inference_mode``: evaluation under ``torch.inference_mode`` against ``torch.no_grad``;
- ``fused_adamw``: the fused AdamW kernel against the default (for-each) one, one full training step;
- ``threads``: a training step on all cores against one core;
- ``group_by_length``: an epoch of training steps (forward + backward) on batches drawn from
  length-sorted groups (``train.group_by_length``) against plain random batches;
- ``collapsed_penalty``: EWC's penalty over 10 consolidated tasks kept as one quadratic against ten;
- ``batched_fisher``: EWC's diagonal Fisher from batched per-example gradients against one backward
  pass per example (the same numbers: ``tests/test_per_example.py``).
The feature cache, bf16 autocast and ``torch.compile`` are measured by ``frozen`` and ``mfu``.
Each figure is seconds off over seconds on (above 1: the optimisation helps).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from ..config import HeadConfig

from ..experiment import load_config
from ..data.stream import build_stream
from ..methods.components.importance import diagonal_fisher
from ..methods.components.penalty import QuadraticPenalty
from ..models.backbones import build_backbone
from ..models.learner import Classifier
from ..train.batching import Inputs, epoch_batches, length_sorted_batches, make_batch, pad
from .common import MINILM, fastest, interleaved


def _encode(backbone, tokens: list[list[int]], batches: list[torch.Tensor], context) -> None:
    with context():
        for idx in batches:
            ids, mask = pad([tokens[i] for i in idx.tolist()], backbone.pad_id)
            backbone(ids, mask)


def _ratio(times: dict[str, list[float]]) -> float:
    return fastest(times["off"]) / fastest(times["on"])


def run(quick: bool = False, rounds: int | None = None) -> dict:
    rounds = rounds or (1 if quick else 3)
    backbone_cfg = {"arch": "bert", "size": "tiny", "max_length": 64} if quick else {"name": MINILM, "max_length": 64}
    cfg = load_config({"backbone": backbone_cfg, "method": {"name": "seq"},
                       "data": {"name": "clinc150", "scenario": "class_incremental", "classes_per_task": 10,
                                "max_tasks": 5, "max_test_per_class": 3 if quick else 30}})
    backbone = build_backbone(cfg.backbone).eval()
    stream = build_stream(cfg.data, cfg.seed)
    texts = [x for t in stream.tasks for x in t.test_texts]
    tokens = backbone.tokenize(texts)
    n, size = len(tokens), 128
    sorted_batches = length_sorted_batches([len(t) for t in tokens], size)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    data_order = [order[i: i + size] for i in range(0, n, size)]
    rows = []

    times = interleaved({"on": lambda: _encode(backbone, tokens, sorted_batches, torch.inference_mode),
                         "off": lambda: _encode(backbone, tokens, data_order, torch.inference_mode)}, rounds)
    rows.append({"optimisation": "length_sorted_eval", "speedup": _ratio(times), "times": times,
                 "what": f"encode {n} CLINC150 test texts, batches of {size}"})
    times = interleaved({"on": lambda: _encode(backbone, tokens, sorted_batches, torch.inference_mode),
                         "off": lambda: _encode(backbone, tokens, sorted_batches, torch.no_grad)}, rounds)
    rows.append({"optimisation": "inference_mode", "speedup": _ratio(times), "times": times,
                 "what": "the same encoding under no_grad"})

    head = torch.nn.Linear(backbone.dim, 10)
    batch = [tokens[i][:32] for i in range(16)]
    ids, mask = pad(batch, backbone.pad_id)
    labels = torch.arange(16) % 10

    def train_steps(fused: bool, threads: int | None = None, steps: int = 3 if quick else 10) -> None:
        model = copy.deepcopy(backbone).train()
        params = list(model.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-5, fused=fused, foreach=None if fused else True)
        before = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            for _ in range(steps):
                loss = F.cross_entropy(head(model(ids, mask)), labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        finally:
            torch.set_num_threads(before)

    times = interleaved({"on": lambda: train_steps(True), "off": lambda: train_steps(False)}, rounds)
    rows.append({"optimisation": "fused_adamw", "speedup": _ratio(times), "times": times,
                 "what": f"{backbone.source} training steps, batch 16 × ≤32 tokens"})
    times = interleaved({"on": lambda: train_steps(True), "off": lambda: train_steps(True, threads=1)}, rounds)
    rows.append({"optimisation": "threads", "speedup": _ratio(times), "times": times,
                 "what": f"the same steps on {torch.get_num_threads()} threads against 1"})

    epoch = tokens[: 96 if quick else 320]
    lengths = [len(t) for t in epoch]
    model = copy.deepcopy(backbone).train()

    def epoch_steps(grouped: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        for idx in epoch_batches(len(epoch), 16, generator, lengths if grouped else None):
            ids, mask = pad([epoch[i] for i in idx.tolist()], backbone.pad_id)
            loss = F.cross_entropy(head(model(ids, mask)), torch.arange(len(idx)) % 10)
            loss.backward()
        model.zero_grad(set_to_none=True)

    times = interleaved({"on": lambda: epoch_steps(True), "off": lambda: epoch_steps(False)}, rounds)
    rows.append({"optimisation": "group_by_length", "speedup": _ratio(times), "times": times,
                 "what": f"forward + backward over {len(epoch)} CLINC150 texts in batches of 16"})

    params = {n: p for n, p in backbone.named_parameters()}
    collapsed, separate = QuadraticPenalty(), []
    for t in range(10):
        importance = {n: torch.rand_like(p) for n, p in params.items()}
        collapsed.add(importance, params)
        separate.append(QuadraticPenalty())
        separate[-1].add(importance, params)

    def penalty_steps(terms: list[QuadraticPenalty]) -> None:
        for _ in range(3):
            for term in terms:
                term.value(params)
                term.add_gradient(params, 1.0)

    times = interleaved({"on": lambda: penalty_steps([collapsed]), "off": lambda: penalty_steps(separate)}, rounds)
    rows.append({"optimisation": "collapsed_penalty", "speedup": _ratio(times), "times": times,
                 "what": "EWC penalty value + gradient over 10 tasks; state 2 copies instead of 20"})
    learner = Classifier(backbone, HeadConfig(), stream).eval()
    learner.begin_task(stream.tasks[0])
    first = stream.tasks[0].test_labels[: 64 if quick else 300]
    labels = torch.tensor(first)
    data = Inputs(labels, torch.zeros_like(labels), torch.arange(len(labels)), tokens=tokens[: len(first)])
    params = {k: p for k, p in learner.named_parameters() if p.requires_grad}

    def fisher(batched: bool) -> None:
        diagonal_fisher(learner, params, data, lambda x: make_batch(x, torch.arange(len(x)), backbone.pad_id,
                                                                    torch.device("cpu")), batched=batched)

    times = interleaved({"on": lambda: fisher(True), "off": lambda: fisher(False)}, rounds)
    rows.append({"optimisation": "batched_fisher", "speedup": _ratio(times), "times": times,
                 "what": f"diagonal Fisher over {len(first)} CLINC150 texts, batches of 32 against one at a time"})
    return {"name": "optimisations", "figure": min(r["speedup"] for r in rows), "target": "report", "met": None,
            "rows": rows, "setting": f"{backbone.source}, {torch.get_num_threads()} threads"}
