"""Methods inside the engine on a tiny model: what they train, what they keep, what they refuse."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config

import forgetlab
from forgetlab.cli import main
from forgetlab.experiment import load_config
from forgetlab.engine import Engine
from forgetlab.methods import REGISTRY, method_class
from forgetlab.store import Store


def run_engine(tmp_path, cfg) -> Engine:
    engine = Engine(load_config(cfg))
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    return engine


@pytest.mark.parametrize("method", [{"name": "lora"}, {"name": "adapter", "size": 8},
                                    {"name": "prompt_tuning", "num_virtual_tokens": 4}])
def test_peft_methods_keep_every_base_weight_bit_identical_and_train_only_their_modules(tmp_path, method):
    engine = Engine(load_config(tiny_config(method=method)))
    params = dict(engine.learner.backbone.named_parameters())
    modules = {n for n in params if ".fl_shared." in n}
    assert modules and all(params[n].requires_grad == (n in modules) for n in params)
    before = {n: p.detach().clone() for n, p in params.items()}
    head_before = engine.learner.head.weight().detach().clone()
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    after = dict(engine.learner.backbone.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in params if n not in modules)
    assert any(not torch.equal(before[n], after[n]) for n in modules)
    assert not torch.equal(head_before, engine.learner.head.weight())


@pytest.mark.parametrize("name", ["lora", "adapter", "prompt_tuning"])
def test_per_task_modules_give_zero_forgetting_in_task_incremental_streams(tmp_path, name):
    method = {"name": name, "per_task": True, **({"num_virtual_tokens": 4} if name == "prompt_tuning" else {})}
    cfg = tiny_config(method=method, data={"scenario": "task_incremental"}, train={"weight_decay": 0.0})
    R = forgetlab.run(cfg, out=tmp_path / "r").accuracy_matrix
    for j in range(3):       # the task's module and head block never change after it is learned
        assert (R[j:, j] == R[j, j]).all(), R


def test_multihead_is_told_the_task_id_and_branch_shares_nothing(tmp_path):
    single = forgetlab.run(tiny_config(), out=tmp_path / "s").accuracy_matrix
    multi = forgetlab.run(tiny_config(method={"name": "multihead"}), out=tmp_path / "m").accuracy_matrix
    assert (multi[0, 1:] > 0).any() and (single[0, 1:] == 0).all()   # unseen tasks: only the task id makes them guessable
    branch = forgetlab.run(tiny_config(method={"name": "multihead", "branch": True}, train={"weight_decay": 0.0}),
                           out=tmp_path / "b").accuracy_matrix
    for j in range(3):
        assert (branch[j:, j] == branch[j, j]).all(), branch


def test_composed_method_fills_the_memory_and_keeps_a_penalty_per_task(tmp_path):
    engine = run_engine(tmp_path, tiny_config(method={"name": "ewc", "replay": {"size": 12}}))
    assert len(engine.method.memory) == 12 and engine.method.consolidated.tasks == 3
    assert set(engine.method.memory.task_ids.tolist()) <= {0, 1, 2}


def test_generative_replay_makes_pseudo_examples_in_the_tasks_format(tmp_path):
    cfg = tiny_config(method={"name": "generative_replay", "ratio": 0.5},
                      data={"max_tasks": 2}, backbone={"size": "tiny", "max_length": 32})
    engine = Engine(load_config(cfg))
    method = engine.method
    engine.run(tmp_path / "run", Store(tmp_path / "forgetlab.db"))
    task1 = engine.stream.tasks[1]
    torch.manual_seed(0)
    pseudo = method.pseudo_examples(task1)
    assert len(pseudo) == round(0.5 * len(task1.train_labels))
    assert pseudo.task_ids.tolist() == [0] * len(pseudo)
    assert set(pseudo.labels.tolist()) <= set(engine.stream.tasks[0].classes)
    for tokens in pseudo.tokens:     # as the tokenizer gives a text: bos, then bytes, within max_length
        assert tokens[0] == 1 and all(t >= 3 for t in tokens[1:]) and len(tokens) <= 32


def test_generative_replay_language_model_learns_to_write_a_task():
    cfg = tiny_config(method={"name": "generative_replay"}, data={"max_tasks": 1},
                      backbone={"size": "tiny", "max_length": 32})     # positions for prompt, text and <eos>
    engine = Engine(load_config(cfg))
    method, learner = engine.method, engine.learner
    tokens = learner.backbone.tokenize(["wake me at 7"])[0]
    batch = {"input_ids": torch.tensor([tokens]), "attention_mask": torch.ones(1, len(tokens), dtype=torch.long),
             "task_ids": torch.tensor([0])}
    optimizer = torch.optim.AdamW(learner.backbone.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(150):
        loss = method.lm_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    method.cfg = method.cfg.model_copy(update={"top_k": 1})
    [generated] = method.generate(0, 1)
    assert learner.backbone.tokenizer.decode(generated) == "wake me at 7"


class Flaky:
    """Mixed into a method: fails once after task 1, so a resumed run can be compared with a straight one."""
    fail = True

    def after_task(self, task):
        super().after_task(task)
        if task.index == 1 and Flaky.fail:
            Flaky.fail = False
            raise RuntimeError("flaky")


@pytest.mark.parametrize("method", [{"name": "der++", "replay": {"size": 10}},
                                    {"name": "ewc", "online": True, "replay": {"size": 10, "strategy": "class_balanced"}},
                                    {"name": "mas"}, {"name": "knn_memory", "freeze_backbone": False},
                                    {"name": "lora", "per_task": False}, {"name": "inc_lora"}, {"name": "o_lora"},
                                    {"name": "ema_lora", "replay": {"size": 10}}, {"name": "merge"}])
def test_resume_restores_method_state(tmp_path, method):
    base = method_class(method["name"])
    name = "test_flaky_" + method["name"]
    if name not in REGISTRY:
        type(name, (Flaky, base), {"name": name})
    cfg = tiny_config(method={**method, "name": name})
    Flaky.fail = True
    with pytest.raises(RuntimeError, match="flaky"):
        forgetlab.run(cfg, out=tmp_path / "a")
    resumed = forgetlab.run(cfg, out=tmp_path / "a", resume=True)
    straight = forgetlab.run(cfg, out=tmp_path / "b")
    assert np.array_equal(resumed.accuracy_matrix, straight.accuracy_matrix)


# -- bad method configs: one line, exit 2 ----------------------------------------------------------
@pytest.mark.parametrize("method, backbone, expect", [
    ({"name": "ewk"}, {}, "unknown method 'ewk'"),
    ({"name": "generative_replay"}, {"arch": "bert"}, "needs a causal LM"),
    ({"name": "ewc", "lam": -1.0}, {}, "method.lam"),
    ({"name": "mas", "lam": -0.5}, {}, "method.lam"),
    ({"name": "replay", "replay": {"size": -1}}, {}, "method.replay.size"),
    ({"name": "lora", "per_task": True}, {}, "method.per_task"),
    ({"name": "multihead"}, {}, None),
])
def test_bad_method_configs_end_with_one_line_and_exit_2(tmp_path, monkeypatch, capsys, method, backbone, expect):
    cfg = tiny_config(method=method, backbone=backbone)
    if expect is None:       # a valid config, for contrast: runs to completion
        cfg["data"]["max_tasks"] = 1
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(sys, "argv", ["forgetlab", "run", str(path), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    if expect is None:
        assert info.value.code in (0, None)
        return
    assert info.value.code == 2 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("error:") and expect in line, line
    assert not (tmp_path / "r" / "results.json").exists()
