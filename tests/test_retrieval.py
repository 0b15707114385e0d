"""The retrieval memory: exact search, the prompt it assembles, its three modes and its cost."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import forgetlab
from forgetlab.config import BackboneConfig
from forgetlab.experiment import load_config
from forgetlab.data.instructions import Instruction
from forgetlab.engine import Engine
from forgetlab.errors import UserError
from forgetlab.kinds.instruction import InstructionTuning
from forgetlab.methods.components.index import VectorIndex
from forgetlab.methods.components.retrieval import RetrievalConfig, RetrievalMemory

from conftest import killed_and_resumed, tiny_config
from test_instruction import instruction_config

NANO_ENCODER = {"arch": "bert", "size": "nano", "max_length": 64}


def test_the_index_returns_the_exact_nearest_keys_nearest_first():
    index = VectorIndex(2, "cosine")
    index.add(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]), torch.tensor([0, 1, 0, 1]))
    query = torch.tensor([[1.0, 0.1]])
    # cosines: 0.995, 0.0995, (1 + 0.1) / (sqrt(2) * 1.005) = 0.774, -0.995
    assert index.search(query, 4).tolist() == [[0, 2, 1, 3]]
    assert index.search(query, 2).tolist() == [[0, 2]]
    assert index.search(query, 9).shape == (1, 4)                                      # k capped at M
    only_value_1 = torch.tensor([[False, True]])
    assert index.search(query, 2, allowed=only_value_1).tolist() == [[1, 3]]
    euclidean = VectorIndex(2, "euclidean")
    euclidean.add(torch.tensor([[3.0, 0.0], [0.0, 0.5], [1.0, 1.0]]), torch.zeros(3))
    # distances from (0, 0): 3, 0.5, 1.414
    assert euclidean.search(torch.zeros(1, 2), 3).tolist() == [[1, 2, 0]]


def test_equal_keys_keep_the_order_they_were_stored_in():
    index = VectorIndex(2)
    index.add(torch.tensor([[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]]), torch.arange(3))
    assert index.search(torch.tensor([[5.0, 0.0]]), 3).tolist() == [[1, 2, 0]]


def memory_over(examples_per_task, **cfg):
    tasks = [SimpleNamespace(index=t, train_examples=examples) for t, examples in enumerate(examples_per_task)]
    config = RetrievalConfig(encoder=BackboneConfig(**NANO_ENCODER), **cfg)
    return RetrievalMemory(config, SimpleNamespace(tasks=tasks), torch.device("cpu")), tasks


def test_a_prompt_gets_its_nearest_stored_examples_nearest_last():
    first = [Instruction("red dog runs fast", "animal"), Instruction("a blue sky", "colour")]
    second = [Instruction("hot soup today", "hot"), Instruction("one two three four five six", "cold")]
    memory, tasks = memory_over([first, second], k=2, demo_words=3)
    memory.add(tasks[0])
    assert len(memory) == 2
    memory.add(tasks[1])
    assert len(memory) == 4 and memory.task_ids.tolist() == [0, 0, 1, 1]
    query = Instruction("hot soup today", "?")                     # the same text as a stored example
    (demos,) = memory.demonstrations([query])
    assert len(demos) == 2 and demos[0] == "hot soup today\nAnswer: hot"      # itself: cosine 1, nearest
    nearest_other = memory.index.search(memory.embed(["hot soup today"]), 2)[0, 1].item()
    other = (first + second)[nearest_other]
    words = other.prompt.split()
    assert demos[1] == f"{' '.join(words[:3])}\nAnswer: {other.response}"    # cut to 3 words
    assert memory.assemble(demos, "Q?") == f"{demos[1]}\n\n{demos[0]}\n\nQ?"
    assert memory.cost()["retrieval_entries"] == 4 and memory.cost()["retrieval_query_ms"] is None   # reset


def test_a_reservoir_keeps_at_most_size_examples_and_forgets_the_embeddings_it_drops():
    torch.manual_seed(0)
    tasks_examples = [[Instruction(f"task {t} example {i}", str(i)) for i in range(6)] for t in range(3)]
    memory, tasks = memory_over(tasks_examples, size=4)
    for task in tasks:
        memory.add(task)
        assert len(memory) == min(4, 6 * (task.index + 1)) == len(memory._embedded)
    stored = set(zip(memory.task_ids.tolist(), memory.example_ids.tolist()))
    assert stored == set(memory._embedded)
    assert memory.index.keys.shape == (4, 32)


def test_the_kind_drops_the_farthest_demonstrations_whole_when_the_window_is_short(tmp_path):
    engine = Engine(load_config(instruction_config(tmp_path, backbone={"max_length": 64})))
    kind = engine.kind
    example = Instruction("ab", "x")
    join = lambda demos, prompt: "".join(d + "|" for d in reversed(demos)) + prompt   # noqa: E731
    # the template "{prompt}=" on bytes: one token per character (+ BOS)
    full = kind.with_demonstrations(example, ["1" * 10, "2" * 20], join, budget=100)
    assert kind.formatter.decode(full).endswith("2" * 20 + "|" + "1" * 10 + "|ab=")
    one = kind.with_demonstrations(example, ["1" * 10, "2" * 20], join, budget=20)
    assert kind.formatter.decode(one).endswith("1" * 10 + "|ab=") and "2" not in kind.formatter.decode(one)
    none = kind.with_demonstrations(example, ["1" * 10, "2" * 20], join, budget=5)
    assert kind.formatter.decode(none).endswith("ab=") and "1" not in kind.formatter.decode(none)


def retrieval_config(tmp_path, method, **retrieval):
    return instruction_config(tmp_path, backbone={"max_length": 128}, train={"epochs": 3},
                              method={"name": method, "retrieval": {"k": 2, "encoder": NANO_ENCODER, **retrieval}})


def test_the_frozen_model_with_retrieval_trains_nothing_and_records_its_cost(tmp_path):
    raw = forgetlab.run(retrieval_config(tmp_path, "retrieval"), out=tmp_path / "run").raw
    log = raw["task_log"]
    assert [e["steps"] for e in log] == [0, 0] and raw["resources"]["trainable_parameters"] == 0
    n1, n2 = (raw["instruction"]["examples"][t][0] for t in ("kinds", "temps"))
    assert [e["method"]["retrieval_entries"] for e in log] == [n1, n1 + n2]      # every training example
    assert all(e["method"]["retrieval_query_ms"] > 0 for e in log)
    # 32 float32 numbers and an int64 value per entry
    assert log[1]["method"]["retrieval_index_mib"] == pytest.approx((n1 + n2) * (32 * 4 + 8) / 2**20)
    # the answers kept show what was retrieved: none before the stream, k = 2 after a task
    assert raw["predictions"][0]["kinds"][0]["demonstrations"] == []
    demos = raw["predictions"][1]["kinds"][0]["demonstrations"]
    assert len(demos) == 2 and all("\nAnswer: " in d for d in demos)
    assert "[retrieved] " in (tmp_path / "run" / "report.html").read_text()


def test_retrieval_only_on_instruction_streams(tmp_path):
    with pytest.raises(UserError, match="method.retrieval: .*only on instruction streams"):
        forgetlab.run(tiny_config(method={"name": "seq", "retrieval": {"encoder": NANO_ENCODER}}), out=tmp_path / "run")


def test_k_zero_as_a_variant_is_the_plain_run_and_fine_tuning_with_retrieval_differs(tmp_path):
    plain = forgetlab.run(instruction_config(tmp_path, backbone={"max_length": 128}, train={"epochs": 3}),
                          out=tmp_path / "plain").raw
    raw = forgetlab.run(retrieval_config(tmp_path, "seq", variants=[0]), out=tmp_path / "rag").raw
    assert raw["variants"]["parameter"] == "retrieval.k" and raw["variants"]["value"] == 2
    (point,) = raw["variants"]["points"]
    assert point["value"] == 0
    for name in ("generated", "likelihood"):
        assert point["matrices"][name]["values"] == plain["matrices"][name]["values"]     # the same training
    assert raw["matrices"]["likelihood"]["values"] != plain["matrices"]["likelihood"]["values"]
    assert [e["loss"] for e in raw["task_log"]] == [e["loss"] for e in plain["task_log"]]


def test_retrieval_cannot_add_variants_to_a_method_with_its_own(tmp_path):
    cfg = retrieval_config(tmp_path, "average", variants=[0])
    cfg["method"]["alphas"] = [0.5]
    with pytest.raises(UserError, match="method.retrieval.variants: average evaluates its own variants"):
        forgetlab.run(cfg, out=tmp_path / "run")


def test_a_killed_retrieval_run_resumes_to_the_straight_run(tmp_path, monkeypatch):
    cfg = retrieval_config(tmp_path, "seq", size=40)
    straight = forgetlab.run(cfg, out=tmp_path / "straight").raw
    resumed = killed_and_resumed(cfg, tmp_path / "killed", InstructionTuning, monkeypatch, evaluations=2)
    assert resumed["matrices"]["generated"]["values"] == straight["matrices"]["generated"]["values"]
    assert resumed["matrices"]["likelihood"]["values"] == straight["matrices"]["likelihood"]["values"]
    n1 = resumed["instruction"]["examples"]["kinds"][0]
    assert [e["method"]["retrieval_entries"] for e in resumed["task_log"]] == [min(n1, 40), 40]
    saved = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert saved["status"] == "completed" and np.isfinite(saved["metrics"]["score"])


def test_prompt_tuning_with_retrieval_trains_the_virtual_tokens_only(tmp_path):
    cfg = retrieval_config(tmp_path, "prompt_tuning", variants=[0])
    cfg["method"]["num_virtual_tokens"] = 4
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    assert raw["task_log"][0]["trainable_parameters"] == 4 * 32                 # 4 virtual tokens of width 32
    (point,) = raw["variants"]["points"]
    assert point["value"] == 0 and raw["variants"]["value"] == 2
    assert [e["method"]["retrieval_entries"] > 0 for e in raw["task_log"]] == [True, True]
