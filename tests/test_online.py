"""Online, task-free streams: the blurry split counted by hand, A_auc, the online loop on classification
and instruction streams, online replay, EWC's pseudo-boundaries, refusals, and resume."""
from __future__ import annotations

import hashlib
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

import forgetlab
from conftest import killed_and_resumed, tiny_config
from forgetlab.data.online import blurry_split, composition
from forgetlab.errors import UserError
from forgetlab.eval.metrics import anytime_auc
from forgetlab.experiment import load_config
from forgetlab.kinds.classification import Classification
from forgetlab.methods import base, ewc
from forgetlab.report import write_report
from forgetlab.train import online
from test_instruction import instruction_config


def online_config(**sections) -> dict:
    return tiny_config(**{"online": {"blurry": 0.1, "eval_every": 4}, **sections})


# -- the blurry split ----------------------------------------------------------------------------
def test_blurry_split_moves_a_share_of_each_task_to_its_neighbours():
    segments = blurry_split([10, 10, 10], 0.2, seed=0)
    counts = composition(segments, 3)
    # round(0.2 * 10) = 2 examples leave each task: task 0's and task 2's can only go to segment 1,
    # task 1's go to segment 0 or 2 (a of them to segment 0)
    a = counts[0][1]
    assert counts == [[8, a, 0], [2, 8, 2], [0, 2 - a, 8]]
    everything = sorted(x for segment in segments for x in segment)
    assert everything == [(t, e) for t in range(3) for e in range(10)]           # every example exactly once
    assert blurry_split([10, 10, 10], 0.2, seed=0) == segments                  # seeded
    assert composition(blurry_split([10, 10, 10], 0.0, seed=0), 3) == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    assert composition(blurry_split([7], 0.5, seed=0), 1) == [[7]]              # no neighbour: nothing moves


def test_anytime_auc_is_the_mean_of_the_curve():
    assert anytime_auc([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        anytime_auc([])


def test_a_config_without_online_keeps_its_hash():
    cfg = load_config(tiny_config())
    kept = {k: v for k, v in cfg.to_dict().items() if k not in ("log", "online")}
    for section, later in (("train", ("distributed", "zero_stage")), ("backbone", ("dropout",)),
                           ("eval", ("general",))):    # added later still
        kept[section] = {k: v for k, v in kept[section].items() if k not in later}
    assert cfg.hash() == hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
    assert load_config(online_config()).hash() != cfg.hash()


# -- the online loop -----------------------------------------------------------------------------
def test_an_online_classification_run(tmp_path):
    raw = forgetlab.run(online_config(), out=tmp_path / "run").raw
    on = raw["online"]
    steps = sum(e["steps"] for e in raw["task_log"])
    # 3 tasks of 5 classes x 8 examples = 40 each; batches of 8 never cross a segment's end
    assert [sum(c[t] for c in on["segments"]) for t in range(3)] == [40, 40, 40]
    assert steps == sum(math.ceil(sum(c) / 8) for c in on["segments"])
    assert len(on["curve"]) == math.ceil(steps / 4)
    assert [p["step"] for p in on["curve"]][:-1] == list(range(4, 4 * len(on["curve"]), 4))
    assert on["curve"][-1]["step"] == steps and on["curve"][-1]["examples_seen"] == 120
    for p in on["curve"]:
        assert p["value"] == pytest.approx(np.mean(p["rows"]["accuracy"][: p["tasks_seen"]]))
    assert np.array(raw["accuracy_matrix"]).shape == (3, 3)
    assert raw["metrics"]["a_auc"] == on["a_auc"] == pytest.approx(np.mean([p["value"] for p in on["curve"]]))
    assert raw["metric_directions"]["a_auc"] == "higher"
    page = (tmp_path / "run" / "report.html").read_text()
    assert "a_auc" in page and "Anytime accuracy" in page


def test_online_replay_fills_its_memory_at_every_step(tmp_path, monkeypatch):
    sizes, real = [], base.Method.observe

    def observe(self, inputs):
        real(self, inputs)
        sizes.append((len(inputs), len(self.memory)))

    monkeypatch.setattr(base.Method, "observe", observe)
    forgetlab.run(online_config(method={"name": "seq", "replay": {"size": 20}}), out=tmp_path / "run")
    seen = np.cumsum([n for n, _ in sizes])
    assert [m for _, m in sizes] == [min(20, s) for s in seen]           # 8, 16, 20, 20, ...
    assert seen[-1] == 120


def test_ewc_needs_boundaries_online(tmp_path):
    with pytest.raises(UserError) as err:
        forgetlab.run(online_config(method={"name": "ewc"}), out=tmp_path / "run")
    assert str(err.value) == ("method.name: ewc needs task boundaries; set online.boundary_every (steps) or use a "
                              "task-free method (seq, replay, lora, ...)")


def test_ewc_takes_a_fisher_every_k_steps_on_the_examples_since_the_last(tmp_path, monkeypatch):
    sizes, real = [], ewc.diagonal_fisher

    def fisher(learner, params, data, *args):
        sizes.append(len(data))
        return real(learner, params, data, *args)

    monkeypatch.setattr(ewc, "diagonal_fisher", fisher)
    raw = forgetlab.run(online_config(method={"name": "ewc", "lam": 100.0}, online={"boundary_every": 3}),
                        out=tmp_path / "run").raw
    steps = sum(e["steps"] for e in raw["task_log"])
    assert len(sizes) == steps // 3
    assert sizes[0] == 24                                                  # three full batches of 8


def test_what_an_online_stream_refuses(tmp_path):
    method = SimpleNamespace(per_task_encoder=False, task_free=True, name="seq", retrieval=None)
    cfg = load_config(online_config())
    with pytest.raises(UserError, match=r"^online: runs classification and instruction streams, not language_modeling"):
        online.check(cfg, "language_modeling", method)
    for train, key in (({"epochs": 2}, "train.epochs"), ({"max_steps": 5}, "train.max_steps")):
        with pytest.raises(UserError, match=rf"^{key}: an online stream is one pass"):
            forgetlab.run(online_config(train=train), out=tmp_path / key)
    with pytest.raises(UserError, match=r"^method.name: lwf needs task boundaries and has no pseudo-boundary"):
        forgetlab.run(online_config(method={"name": "lwf"}, online={"boundary_every": 2}), out=tmp_path / "lwf")
    with pytest.raises(UserError, match=r"^method.retrieval: stores each task's examples at the task's end"):
        online.check(cfg, "instruction", SimpleNamespace(**{**vars(method), "retrieval": object()}))


def test_an_online_instruction_run(tmp_path):
    cfg = instruction_config(tmp_path, train={"epochs": 1}, online={"blurry": 0.25, "eval_every": 2})
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    G = np.array(raw["matrices"]["generated"]["values"])
    assert G.shape == (2, 2)
    curve = raw["online"]["curve"]
    steps = sum(e["steps"] for e in raw["task_log"])
    assert len(curve) == math.ceil(steps / 2) and curve[-1]["rows"]["generated"] == list(G[-1])
    assert raw["metrics"]["a_auc"] == pytest.approx(np.mean([p["value"] for p in curve]))


def test_resume_equals_a_straight_run(tmp_path, monkeypatch):
    cfg = online_config(method={"name": "ewc", "lam": 100.0, "fisher_examples": 8, "replay": {"size": 20}},
                        online={"boundary_every": 3})
    straight = forgetlab.run(cfg, out=tmp_path / "straight").raw
    resumed = killed_and_resumed(cfg, tmp_path / "killed", Classification, monkeypatch, evaluations=4)
    assert resumed["accuracy_matrix"] == straight["accuracy_matrix"]
    assert resumed["online"]["curve"] == straight["online"]["curve"]
    assert resumed["online"]["a_auc"] == straight["online"]["a_auc"]


def test_a_comparison_pools_the_anytime_curves_and_shows_a_auc():
    from forgetlab.report.summary import anytime_curve, columns_for

    runs = [{"metrics": {"a_auc": 0.5}, "online": {"curve": [{"value": 0.2}, {"value": 0.8}]}},
            {"metrics": {"a_auc": 0.7}, "online": {"curve": [{"value": 0.4}, {"value": 1.0}]}}]
    (m1, ci1), (m2, ci2) = anytime_curve(runs)
    assert (m1, m2) == pytest.approx((0.3, 0.9))
    assert ci1 == pytest.approx(12.706 * 0.1, rel=1e-3)            # t(0.975, 1) · s / √2, s = 0.1414
    assert anytime_curve(runs[:1] + [{"online": {"curve": [{"value": 1.0}]}}]) is None   # unequal lengths
    assert ("metrics.a_auc", "A_auc", 4) in columns_for(runs)


def test_a_task_never_leaves_its_own_segment_empty():
    # round(0.75 * 2) = 2 would move both of a task's examples away: at most n - 1 = 1 moves
    assert composition(blurry_split([2, 2], 0.75, seed=0), 2) == [[1, 1], [1, 1]]
