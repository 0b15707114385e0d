"""inc_lora, o_lora and ema_lora on a nano GPT-2: what trains, what stays, what is summed, what is averaged."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_config

from forgetlab.engine import Engine
from forgetlab.experiment import load_config
from forgetlab.methods.components.subspace import orthogonality
from forgetlab.methods.ema_lora import FAST, SLOW
from forgetlab.store import Store


def build(method, **sections) -> Engine:
    return Engine(load_config(tiny_config(method=method, **sections)))


def run(engine, tmp_path) -> dict:
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    return json.loads((tmp_path / "run" / "results.json").read_text())


def test_orthogonality_sums_absolute_inner_products_of_old_and_new_rows():
    assert orthogonality(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])).item() == 0.0
    assert orthogonality(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 4.0]])).item() == 11.0      # |1*3 + 2*4|
    assert orthogonality(torch.tensor([[1.0, 2.0]]), torch.tensor([[-3.0, -4.0]])).item() == 11.0    # absolute
    old = torch.tensor([[1.0, 0.0], [0.0, 1.0]])                                                      # two old rows
    assert orthogonality(old, torch.tensor([[1.0, -1.0], [2.0, 0.0]])).item() == 1 + 1 + 2 + 0
    new = torch.tensor([[3.0, 4.0]], requires_grad=True)
    orthogonality(torch.tensor([[1.0, 2.0]]), new).backward()
    assert new.grad.tolist() == [[1.0, 2.0]]          # sign(11) * old: descending it shrinks the overlap
    new = torch.tensor([[-3.0, -4.0]], requires_grad=True)
    orthogonality(torch.tensor([[1.0, 2.0]]), new).backward()
    assert new.grad.tolist() == [[-1.0, -2.0]]        # sign(-11) * old


def lora_weights(engine, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in engine.learner.backbone.named_parameters() if f".{adapter}." in n}


def test_inc_lora_freezes_earlier_loras_keeps_the_base_and_sums_every_lora_at_test(tmp_path):
    engine = build({"name": "inc_lora"})
    method, backbone = engine.method, engine.learner.backbone
    base = {n: p.detach().clone() for n, p in backbone.named_parameters() if ".fl_task" not in n}
    after_task = {}
    original = method.after_task

    def record(task):
        original(task)
        after_task[task.index] = lora_weights(engine, "fl_task0")
    method.after_task = record
    run(engine, tmp_path)
    now = dict(backbone.named_parameters())
    assert base and all(torch.equal(base[n], now[n]) for n in base)                       # bit-identical
    first = lora_weights(engine, "fl_task0")
    assert all(torch.equal(first[n], after_task[0][n]) for n in first)                    # frozen after task 1
    assert any(not torch.equal(after_task[0][n], lora_weights(build({"name": "inc_lora"}), "fl_task0")[n])
               for n in first)                                                            # but task 1 trained it
    assert backbone.model.base_model.active_adapter == ["fl_task0", "fl_task1", "fl_task2"]
    task = engine.stream.tasks[0]
    batch = method.ctx.batch(method.ctx.inputs(task, "test").subset(torch.arange(4)))
    with torch.no_grad():
        summed = engine.learner(batch).logits
        method.use(["fl_task2"], None)
        last_only = engine.learner(batch).logits
    assert not torch.allclose(summed[summed.isfinite()], last_only[last_only.isfinite()])


def overlap(engine) -> float:
    """sum over layers of |A_0 A_1^T| summed: the second LoRA's overlap with the first."""
    return sum(orthogonality(layer.lora_A["fl_task0"].weight, layer.lora_A["fl_task1"].weight).item()
               for layer in engine.method.lora_layers())


def test_o_lora_makes_the_new_lora_more_orthogonal_than_inc_lora_and_logs_four_figures(tmp_path):
    two = {"data": {"max_tasks": 2}, "train": {"epochs": 3}}
    inc = build({"name": "inc_lora"}, **two)
    start = overlap(inc)                          # same seed: both start from the same LoRAs
    run(inc, tmp_path / "inc")
    o = build({"name": "o_lora", "lambda1": 0.5}, **two)
    assert overlap(o) == start
    results = run(o, tmp_path / "o")
    assert overlap(o) < overlap(inc)
    summaries = [t["method"] for t in results["task_log"]]
    assert [set(s) for s in summaries] == [{"task_loss", "orthogonality", "l2", "update_norm"}] * 2
    assert summaries[0]["orthogonality"] == 0.0 and summaries[1]["orthogonality"] > 0       # no old LoRA at first
    assert all(s["update_norm"] > 0 and s["l2"] > 0 for s in summaries)
    new = o.method.adapter_names[1]
    by_hand = sum((layer.scaling[new] * layer.lora_B[new].weight @ layer.lora_A[new].weight).norm().item()
                  for layer in o.method.lora_layers())
    assert summaries[1]["update_norm"] == pytest.approx(by_hand)


def test_ema_lora_slow_weights_follow_the_ema_of_the_fast_ones_and_evaluation_uses_them(tmp_path):
    engine = build({"name": "ema_lora", "lam": 0.5}, data={"max_tasks": 1}, train={"max_steps": 3})
    method = engine.method
    slow = [s.detach().clone() for _, s in method.pairs()]
    assert all(torch.equal(f, s) for (f, _), s in zip(method.pairs(), slow))             # both start equal
    fasts = []
    original = method.after_step

    def record():
        fasts.append([f.detach().clone() for f, _ in method.pairs()])
        original()
    method.after_step = record
    run(engine, tmp_path)
    assert len(fasts) == 3
    for step in fasts:                            # slow <- 0.5 slow + 0.5 fast: exact in binary
        slow = [0.5 * s + 0.5 * f for s, f in zip(slow, step)]
    assert all(torch.equal(s, kept) for s, (_, kept) in zip(slow, method.pairs()))
    assert not all(torch.equal(f, s) for f, s in method.pairs())
    assert engine.learner.backbone.model.base_model.active_adapter == [SLOW]
    batch = method.ctx.batch(method.ctx.inputs(engine.stream.tasks[0], "test").subset(torch.arange(4)))
    assert "input_ids" in batch                   # encoded afresh, not cached features of an older backbone
    with torch.no_grad():
        evaluated = engine.learner(batch).logits
        method.use([FAST], FAST)
        fast_out = engine.learner(batch).logits
        method.use([SLOW], SLOW)
        slow_out = engine.learner(batch).logits
    assert torch.equal(evaluated, slow_out) and not torch.equal(evaluated, fast_out)


def test_ema_lora_replays_with_a_finite_consistency_loss(tmp_path):
    results = run(build({"name": "ema_lora", "replay": {"size": 10}}, data={"max_tasks": 2}), tmp_path)
    assert all(t["loss"] == t["loss"] for t in results["task_log"])                     # no NaN
