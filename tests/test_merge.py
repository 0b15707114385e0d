"""Merging task vectors: the formulas on hand-made tensors, and the method inside the engine."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from forgetlab.engine import Engine
from forgetlab.errors import UserError
from forgetlab.experiment import load_config
from forgetlab.methods import REGISTRY
from forgetlab.methods.components.merging import mean, task_arithmetic, ties, trim
from forgetlab.methods.merge import Merge
from forgetlab.store import Store


def t(*values):
    return torch.tensor(values)


def test_mean_and_task_arithmetic_count_a_missing_name_as_zeros():
    taus = [{"w": t(1.0, 2.0), "b": t(3.0)}, {"w": t(3.0, -2.0), "b": t(1.0)}, {"w": t(2.0, 3.0), "h": t(6.0)}]
    m = mean(taus)
    assert torch.equal(m["w"], t(2.0, 1.0)) and torch.equal(m["b"], t(4 / 3)) and torch.equal(m["h"], t(2.0))
    a = task_arithmetic(taus, 0.5)
    assert torch.equal(a["w"], t(3.0, 1.5)) and torch.equal(a["b"], t(2.0)) and torch.equal(a["h"], t(3.0))


def test_trim_keeps_the_top_density_magnitudes_of_each_tensor():
    assert torch.equal(trim(t(3.0, -1.0, 0.5, 2.0, 0.1), 0.4), t(3.0, 0.0, 0.0, 2.0, 0.0))      # k = 2 of 5
    assert torch.equal(trim(t(0.01, -0.02), 0.4), t(0.0, -0.02))          # k = max(1, round(0.8)): per tensor
    assert torch.equal(trim(t(1.0, -2.0), 1.0), t(1.0, -2.0))
    assert torch.equal(trim(torch.tensor([[1.0, -5.0], [4.0, 2.0]]), 0.5), torch.tensor([[0.0, -5.0], [4.0, 0.0]]))


def test_ties_trims_elects_a_sign_and_averages_the_values_that_agree():
    taus = [{"w": t(3.0, -1.0, 0.5, 2.0, 0.1)},       # trimmed to [ 3, 0,  0, 2, 0]
            {"w": t(-4.0, 0.2, 1.0, -0.5, 0.3)},      # trimmed to [-4, 0,  1, 0, 0]
            {"w": t(2.0, 0.1, -3.0, 1.0, 0.2)}]       # trimmed to [ 2, 0, -3, 0, 0]
    # coordinate 0: signs conflict, sum 1 > 0 elects +, mean of 3 and 2;  1 and 4: every trimmed value is 0;
    # 2: sum -2 elects -, only -3 agrees;  3: only task 1 kept it, its zeros elsewhere do not count
    assert torch.equal(ties(taus, 0.4, 1.0)["w"], t(2.5, 0.0, -3.0, 2.0, 0.0))
    assert torch.equal(ties(taus, 0.4, 0.5)["w"], t(1.25, 0.0, -1.5, 1.0, 0.0))
    # nothing trimmed, and the sum elects no sign: coordinate 0 is 0; coordinate 1 averages 1 and 3
    assert torch.equal(ties([{"w": t(2.0, 1.0)}, {"w": t(-2.0, 3.0)}], 1.0, 1.0)["w"], t(0.0, 2.0))


class Recording:
    """Mixed into Merge: the weights each task started from and trained to (before they are merged), and
    which were trained."""

    def before_task(self, task):
        super().before_task(task)
        self.starts.append({n: p.detach().clone() for n, p in self.learner.named_parameters()})

    def after_task(self, task):
        self.trained.append({n: p.detach().clone() for n, p in self.learner.named_parameters()})
        self.names.append(set(self.trainable()))
        super().after_task(task)


def recorded_run(tmp_path, method: dict):
    name = "test_recording_merge"
    if name not in REGISTRY:
        type(name, (Recording, Merge), {"name": name})
    engine = Engine(load_config(tiny_config(method={**method, "name": name}, data={"max_tasks": 2})))
    engine.method.trained, engine.method.names, engine.method.starts = [], [], []
    theta0 = {n: p.detach().clone() for n, p in engine.learner.named_parameters()}
    evaluated, evaluate = [], engine.kind.evaluate

    def snapshot(method, seen):
        evaluated.append({n: p.detach().clone() for n, p in engine.learner.named_parameters()})
        return evaluate(method, seen)

    engine.kind.evaluate = snapshot
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    return engine, theta0, evaluated


def test_mean_from_base_evaluates_theta0_plus_the_mean_of_the_task_vectors(tmp_path):
    engine, theta0, evaluated = recorded_run(tmp_path, {"how": "mean", "start": "base"})
    trained, names = engine.method.trained, engine.method.names
    assert len(evaluated) == 3 and names[0] < names[1]          # task 2 also trains its new head block
    for n, p0 in theta0.items():
        taus = [trained[i][n] - p0 if n in names[i] else torch.zeros_like(p0) for i in range(2)]
        assert torch.equal(evaluated[2][n], p0 + torch.stack(taus).mean(0)), n
    # task 2 started from theta_0, not from the model evaluated after task 1
    assert all(torch.equal(engine.method.starts[1][n], p0) for n, p0 in theta0.items())
    assert any(not torch.equal(evaluated[1][n], theta0[n]) for n in names[0])
    summary = engine.method.task_summary(None)
    assert summary["merged_norm"] > 0 and summary["kept"] > 0.5


def test_task_arithmetic_at_scale_1_from_the_merged_model_is_sequential_fine_tuning(tmp_path):
    engine, _, evaluated = recorded_run(tmp_path, {"how": "task_arithmetic", "scale": 1.0})
    assert all(torch.equal(engine.method.starts[1][n], p) for n, p in evaluated[1].items())
    for i in range(2):           # theta_0 + tau_1 + tau_2, the increments, is what task 2 trained to
        for n, p in engine.method.trained[i].items():
            torch.testing.assert_close(evaluated[i + 1][n], p, rtol=0, atol=1e-6)


def test_ties_keeps_about_density_of_the_coordinates_and_restores_its_state(tmp_path):
    engine, _, evaluated = recorded_run(tmp_path, {"density": 0.2})
    method = engine.method
    assert 0.19 <= method.task_summary(None)["kept"] <= 0.41         # the union of two top-20% supports
    fresh = Merge(method.cfg, method.learner, method.ctx)
    fresh.load_state(method.state())
    assert fresh.theta0.keys() == method.theta0.keys() and len(fresh.tasks) == 2
    assert all(torch.equal(fresh.merged()[n], m) for n, m in method.merged().items())
    for n, p0 in fresh.theta0.items():
        assert torch.equal(evaluated[2][n], p0 + method.merged()[n]), n


def test_scale_with_the_mean_is_a_config_error():
    with pytest.raises(UserError, match="method.scale: how: mean averages"):
        load_config(tiny_config(method={"name": "merge", "how": "mean", "scale": 0.5}))
