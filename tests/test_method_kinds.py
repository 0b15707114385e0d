"""Every registered method runs on every task kind it claims (``kinds``), two tasks on a nano GPT-2,
so a claim cannot go stale; a method is refused, in one line, on a kind it does not claim.

The pairs come from ``methods.REGISTRY`` and ``kinds.KINDS`` at collection time: a new method is
tested here on its first run. The hand-written parts are the tiny config of each kind and
``EXTRA_KEYS``, the method keys a method needs to run on these configs. README.md's table of
methods × kinds is checked against scripts/method_kinds_table.py's output."""
import importlib.util
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import forgetlab
from conftest import ROOT, tiny_config
from forgetlab.engine import Engine, supports
from forgetlab.errors import UserError
from forgetlab.experiment import load_config
from forgetlab.kinds import KINDS
from forgetlab.methods import REGISTRY
from test_instruction import instruction_config
from test_lm_stream import lm_config

# Method keys a method needs on these tiny configs, by method name (the only per-method lines here).
EXTRA_KEYS: dict[str, dict] = {
    "freeze": {"layers": 1},     # a whole frozen causal LM has nothing to train (its output layer is the backbone's)
    "retrieval": {"retrieval": {"encoder": {"arch": "bert", "size": "nano"}}},   # a nano sentence encoder
}
TRAINS_NOTHING = {"retrieval"}      # the frozen model with an external memory: no step, no weight changes


def kind_config(kind: str, tmp_path) -> dict:
    """A two-task run of ``kind`` that takes under a second on one thread (two threads on a shared
    2-core machine take many times longer)."""
    if kind == "classification":
        return tiny_config(data={"max_tasks": 2}, train={"num_threads": 1})
    if kind == "language_modeling":
        return lm_config(data={"max_train_tokens": 1024, "max_eval_tokens": 256}, train={"max_steps": 4})
    if kind == "instruction":
        return instruction_config(tmp_path, data={"max_test_per_task": 4}, train={"epochs": 1, "num_threads": 1})
    raise AssertionError(f"kind {kind!r} has no tiny config: add one to kind_config in tests/test_method_kinds.py")


@pytest.fixture(autouse=True)
def _restore_threads():
    """Runs here use one thread (``train.num_threads``); the process's count comes back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


LIBRARY = {n: m for n, m in REGISTRY.items() if m.__module__.startswith("forgetlab.")}   # not tests' subclasses
CLAIMED = [(m, k) for m in sorted(LIBRARY) for k in KINDS if supports(LIBRARY[m], k)]


def test_every_method_claims_at_least_one_kind():
    assert {m for m, _ in CLAIMED} == set(LIBRARY)


@pytest.mark.parametrize("method,kind", CLAIMED, ids=[f"{m}-{k}" for m, k in CLAIMED])
def test_a_method_runs_on_every_kind_it_claims(method, kind, tmp_path, monkeypatch):
    monkeypatch.setattr("forgetlab.engine.write_report", lambda results, path: None)   # its figures cost seconds
    real_run, start = Engine.run, {}

    def run_keeping_the_start(engine, *args, **kwargs):
        start.update(learner=engine.learner, params={n: p.detach().clone() for n, p in engine.learner.named_parameters()})
        return real_run(engine, *args, **kwargs)

    monkeypatch.setattr(Engine, "run", run_keeping_the_start)
    cfg = kind_config(kind, tmp_path)
    cfg["method"] = {"name": method, **EXTRA_KEYS.get(method, {})}
    try:
        results = forgetlab.run(cfg, out=tmp_path / "run")
    except (UserError, ValidationError) as e:
        if method in EXTRA_KEYS:
            raise
        pytest.fail(f"{method} on {kind}: a config error ({e}); if it needs keys to run, add them to "
                    f"EXTRA_KEYS in tests/test_method_kinds.py, else narrow its kinds")
    raw = results.raw
    assert raw["status"] == "completed" and raw["kind"] == kind and len(raw["tasks"]) == 2
    assert results.accuracy_matrix.shape == (2, 2) and np.isfinite(results.accuracy_matrix).all()
    now = dict(start["learner"].named_parameters())
    if method in TRAINS_NOTHING:
        assert all(t["steps"] == 0 for t in raw["task_log"])
        assert all(torch.equal(now[n].detach(), p) for n, p in start["params"].items())
        return
    # every task trained with a finite loss, and training changed some of the model's parameters
    assert all(t["steps"] > 0 and math.isfinite(t["loss"]) for t in raw["task_log"])
    assert any(n in now and not torch.equal(now[n].detach(), p) for n, p in start["params"].items()), \
        f"{method} on {kind}: trained, but no parameter of the model changed"


def test_a_method_is_refused_on_a_kind_it_does_not_claim(tmp_path):
    unclaimed = [(m, k) for m in sorted(LIBRARY) for k in KINDS if not supports(LIBRARY[m], k)]
    method, kind = unclaimed[0]
    cfg = kind_config(kind, tmp_path)
    cfg["method"] = {"name": method}
    with pytest.raises(UserError) as e:
        Engine(load_config(cfg))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"method.name: {method} does not support {kind} streams")
    usable = sorted(n for n, m in REGISTRY.items() if supports(m, kind))
    assert message.endswith(f"use one of {', '.join(usable)}")


def test_the_readme_table_is_the_scripts_output():
    spec = importlib.util.spec_from_file_location("method_kinds_table", ROOT / "scripts" / "method_kinds_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.readme_table((ROOT / "README.md").read_text()) == script.table(), \
        "README.md's methods x kinds table is stale: run PYTHONPATH=src python scripts/method_kinds_table.py --write"
