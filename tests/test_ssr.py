"""Self-Synthesized Rehearsal on a tiny GPT: the synthetic examples of an old task have its format, no
real old example is trained on again, only k demonstrations are kept, the inputs are written by the
pre-stream weights, and a run through a three-task stream (and its resume) completes."""
from __future__ import annotations

import json

import numpy as np
import torch
from test_instruction import instruction_config

import forgetlab
from conftest import killed_and_resumed
from forgetlab.engine import Engine
from forgetlab.experiment import load_config
from forgetlab.kinds.instruction import InstructionTuning
from forgetlab.methods import ssr as ssr_module
from forgetlab.models.causal_lm import IGNORE_INDEX

# one-letter options: a tiny byte-level GPT learns to answer them in 10 epochs, even after a garbled input
TASKS = (("kinds", "colour or animal?", {"c": ["red", "blue", "green"], "a": ["cat", "dog", "cow"]}),
         ("temps", "hot or cold?", {"h": ["sun", "fire", "oven"], "k": ["ice", "snow", "frost"]}),
         ("sizes", "big or small?", {"b": ["whale", "tower", "moon"], "s": ["ant", "pea", "dust"]}))


def write_tasks(folder, tasks=2, n=32):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, question, words in TASKS[:tasks]:
        rows = []
        for _ in range(n):
            answer = list(words)[rng.integers(2)]
            rows.append({"prompt": f"{rng.choice(words[answer])} {question}", "response": answer, "options": list(words)})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(folder / f"{name}.jsonl"))
    return paths


def ssr_config(tmp_path, tasks=2, **method):
    return instruction_config(tmp_path, data={"sequence": write_tasks(tmp_path / "ssr_tasks", tasks)},
                              method={"name": "ssr", "per_task": 8, **method},
                              backbone={"max_length": 192})   # room for the few-shot prompt: 96 tokens, 96 new


def test_synthetic_examples_have_the_old_tasks_format_and_no_real_example_returns(tmp_path, monkeypatch):
    engine = Engine(load_config(ssr_config(tmp_path)))
    engine.kind.start(engine.method, tmp_path)
    first, second = engine.stream.tasks
    method, backbone, fmt = engine.method, engine.learner.backbone, engine.kind.formatter
    initial = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    engine._train(first)

    # (b) only the k = 2 demonstrations of the first task are kept: two of its training prompts, as UTF-8 bytes
    state = method.state()
    assert sorted(state) == ["ssr.demo.0.0", "ssr.demo.0.1"]
    demos = [bytes(state[k].tolist()).decode() for k in sorted(state)]
    assert demos == method.demos[0] and all(d in first.train_texts for d in demos)

    # (c) the writer is the frozen pre-stream copy; the model that answers is the trained one
    assert all(torch.equal(p, initial[n]) for n, p in method.base.named_parameters())
    assert any(not torch.equal(p, initial[n]) for n, p in backbone.named_parameters())
    assert all(not p.requires_grad for p in method.base.parameters())
    writers, real = [], ssr_module.greedy_decode

    def recording(model, prompts, *args, **kwargs):
        writers.append((model, fmt.decode(prompts[0])))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(ssr_module, "greedy_decode", recording)
    data = method.training_inputs(second, engine.stream.tasks)
    assert [w[0] for w in writers] == [method.base]
    listed = "".join(f"Input {i}:\n{d[: -len(' colour or animal?')]}\n\n" for i, d in enumerate(demos, 1))
    assert writers[0][1] == ssr_module.FEW_SHOT.format(listed=listed, next=3)    # the demonstrations' inputs

    # (a) every synthetic example is an example of the first task in its template, answered with an option
    synthetic = method.synthetic
    counts = method.task_summary(second)["synthetic"]["kinds"]
    assert counts["made"] + counts["dropped"] == 8 and counts["made"] >= 1 and len(synthetic) == counts["made"]
    assert len(data) == len(second.train_examples) + len(synthetic)
    assert set(synthetic.task_ids.tolist()) == {0} and set(synthetic.example_ids.tolist()) == {-1}
    for tokens, targets in zip(synthetic.tokens, synthetic.targets):
        cut = next(i for i, t in enumerate(targets) if t != IGNORE_INDEX)
        assert all(t == IGNORE_INDEX for t in targets[:cut]) and targets[cut:] == tokens[cut:]
        prompt = fmt.decode(tokens[:cut])
        assert prompt.endswith(" colour or animal?=") and len(prompt) > len(" colour or animal?=")   # template "{prompt}="
        assert fmt.decode(tokens[cut:]) in ("c", "a")                                   # an option, then the end
    # (b) no real training example of the first task is among the second task's training inputs
    real_first = {tuple(t) for t in engine.kind.inputs(first, "train").tokens}
    assert not real_first & {tuple(t) for t in data.tokens}


def test_demonstrations_come_back_on_resume_as_they_were(tmp_path):
    engine = Engine(load_config(ssr_config(tmp_path, demonstrations=3)))
    first = engine.stream.tasks[0]
    engine.method.after_task(first)
    restored = Engine(load_config(ssr_config(tmp_path, demonstrations=3))).method
    restored.load_state(engine.method.state())
    assert restored.demos == engine.method.demos and len(restored.demos[0]) == 3


def test_a_three_task_run_rehearses_both_old_tasks_and_resumes_exactly(tmp_path, monkeypatch):
    cfg = ssr_config(tmp_path, tasks=3, per_task=4)
    straight = forgetlab.run(cfg, out=tmp_path / "a").raw
    assert straight["status"] == "completed" and straight["tasks"] == ["kinds", "temps", "sizes"]
    logs = [log["method"] for log in straight["task_log"]]
    assert logs[0] == {} and list(logs[1]["synthetic"]) == ["kinds"] and list(logs[2]["synthetic"]) == ["kinds", "temps"]
    for log, task in zip(straight["task_log"][1:], (1, 2)):
        made = sum(c["made"] for c in log["method"]["synthetic"].values())
        assert all(c["made"] + c["dropped"] == 4 for c in log["method"]["synthetic"].values())
        assert made >= 1 and log["examples"] == (29 + made) * 10                 # 29 own examples and the synthetic ones, 10 epochs

    resumed = killed_and_resumed(cfg, tmp_path / "b", InstructionTuning, monkeypatch, evaluations=3)    # after task 2
    assert resumed["matrices"]["generated"]["values"] == straight["matrices"]["generated"]["values"]
    assert [log["method"] for log in resumed["task_log"]] == logs
