"""Weight averaging (methods/average.py): exact endpoints, the run at alpha 1 and 0 against sequential
fine-tuning and the original model, the alpha curve as variants, and resume."""
import numpy as np
import pytest
import torch

import forgetlab
from forgetlab.methods import REGISTRY, method_class
from forgetlab.methods.components.snapshots import interpolate
from conftest import tiny_config
from test_instruction import instruction_config
from methods_helpers import feature_setup, make_method
from test_methods_engine import Flaky


def test_interpolation_at_0_and_1_is_each_endpoint_exactly():
    start = {"w": torch.tensor([0.1, 0.7, -3.3, 1e-8])}
    end = {"w": torch.tensor([0.3, 0.2, 2.9, 5e7])}
    assert torch.equal(interpolate(start, end, 0.0)["w"], start["w"])
    assert torch.equal(interpolate(start, end, 1.0)["w"], end["w"])
    assert torch.allclose(interpolate(start, end, 0.25)["w"], torch.tensor([0.15, 0.575, -1.75, 1.25e7]))


def _matrices(raw):
    return {name: m["values"] for name, m in raw["matrices"].items()}


def test_alpha_1_is_sequential_fine_tuning_and_the_curve_leaves_the_run_unchanged(tmp_path):
    """WiSE-FT of the sequential chain at alpha 1 is sequential fine-tuning, answers included, with the
    curve's alpha 0 (the original model: every row the baseline) evaluated beside it."""
    cfg = instruction_config(tmp_path, train={"epochs": 3})
    seq = forgetlab.run(cfg, out=tmp_path / "seq").raw
    wise = {"name": "average", "anchor": "original", "carry": "fine_tuned", "alpha": 1.0, "alphas": [0.0]}
    curve = forgetlab.run({**cfg, "method": wise}, out=tmp_path / "curve").raw
    assert _matrices(curve) == _matrices(seq) and curve["predictions"] == seq["predictions"]
    assert curve["variants"]["parameter"] == "alpha" and curve["variants"]["value"] == 1.0
    [at_0] = curve["variants"]["points"]
    assert at_0["value"] == 0.0
    for name, m in at_0["matrices"].items():
        assert all(row == m["baseline"] for row in m["values"])
    assert at_0["metrics"]["score"] == pytest.approx(np.mean(at_0["matrices"]["generated"]["baseline"]))
    assert curve["resources"]["method_state_mib"] > 0 and seq["resources"]["method_state_mib"] == 0
    assert seq["variants"] is None


def test_averaging_with_the_previous_task_keeps_alpha_of_each_update():
    """anchor previous, alpha 0.25: a task's update of +4 leaves +1; the next task's +8 from there, +2."""
    x = torch.eye(2)
    _, learner, ctx = feature_setup([([0, 1], x, [0, 1]), ([0, 1], x, [1, 0])])
    method = make_method("average", learner, ctx, alpha=0.25)
    learner.begin_task(ctx.stream.tasks[0])
    start = {n: p.detach().clone() for n, p in method.trainable().items()}
    assert start
    for task, update, expected in zip(ctx.stream.tasks, (4.0, 8.0), (1.0, 3.0)):
        learner.begin_task(task)
        method.before_task(task)
        with torch.no_grad():
            for p in method.trainable().values():
                p += update                     # what training the task did
        method.after_task(task)
        for n, p in method.trainable().items():
            assert torch.allclose(p, start[n] + expected)


def test_bad_alpha_is_one_line(tmp_path):
    from forgetlab.errors import UserError
    cfg = instruction_config(tmp_path, method={"name": "average", "alphas": [1.5]})
    with pytest.raises(UserError, match=r"method.alphas: .* not 1.5"):
        forgetlab.run(cfg, out=tmp_path / "bad")


def test_resume_continues_exactly(tmp_path):
    method = {"name": "average", "anchor": "original", "carry": "fine_tuned", "alphas": [0.25]}
    name = "test_flaky_average"
    if name not in REGISTRY:
        type(name, (Flaky, method_class("average")), {"name": name})
    cfg = instruction_config(tmp_path, method={**method, "name": name}, train={"epochs": 1})
    third = tmp_path / "tasks" / "kinds_again.jsonl"
    third.write_text(open(cfg["data"]["sequence"][0]).read())
    cfg["data"]["sequence"] = cfg["data"]["sequence"] + [str(third)]
    Flaky.fail = True
    with pytest.raises(RuntimeError, match="flaky"):
        forgetlab.run(cfg, out=tmp_path / "a")
    resumed = forgetlab.run(cfg, out=tmp_path / "a", resume=True).raw
    straight = forgetlab.run(cfg, out=tmp_path / "b").raw
    assert _matrices(resumed) == _matrices(straight) and resumed["variants"] == straight["variants"]


def test_the_curve_on_a_classification_stream_leaves_the_runs_records_alone(tmp_path):
    """Variants are evaluated without the kind's records (per-class rows, diagnostics): the run with a
    curve reports what the run without one does, and its alpha 0 point is the run at alpha 0 (new head
    blocks join the original model as they were when first trained)."""
    plain = forgetlab.run(tiny_config(method={"name": "average", "anchor": "original", "carry": "fine_tuned"}),
                          out=tmp_path / "plain").raw
    cfg = tiny_config(method={"name": "average", "anchor": "original", "carry": "fine_tuned", "alphas": [0.0]})
    curve = forgetlab.run(cfg, out=tmp_path / "curve").raw
    assert curve["accuracy_matrix"] == plain["accuracy_matrix"]
    assert curve["per_class_accuracy"] == plain["per_class_accuracy"]
    assert curve["diagnostics"]["summary"] == plain["diagnostics"]["summary"]
    zero = forgetlab.run(tiny_config(method={"name": "average", "anchor": "original", "carry": "fine_tuned",
                                             "alpha": 0.0}), out=tmp_path / "zero").raw
    [at_0] = curve["variants"]["points"]
    assert at_0["matrices"]["accuracy"]["values"] == zero["accuracy_matrix"] != plain["accuracy_matrix"]
