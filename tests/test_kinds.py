"""A toy third kind in one module, run through the engine with no change outside this file: the
proof that a task kind is one module. It reads a number (0-9) from a text of number words; task 0
holds 0-4, task 1 holds 5-9. Two matrices: exact-match accuracy (higher is better) and the mean
absolute error of the number read (lower is better)."""
import random
from typing import Literal

import pytest
import torch
from pydantic import ConfigDict
from torch import nn

import forgetlab
from conftest import tiny_config
from forgetlab.config import DataConfig
from forgetlab.data.stream import Stream, Task
from forgetlab.kinds import KINDS, Kind
from forgetlab.models.learner import Learner, Output
from forgetlab.train.batching import Inputs

WORDS = "zero one two three four five six seven eight nine".split()


class NumberData(DataConfig):
    model_config = ConfigDict(extra="forbid")
    scenario: Literal["read_number"] = "read_number"
    per_number: int = 6


class Reader(Learner):
    def __init__(self, backbone):
        super().__init__(backbone)
        self.out = nn.Linear(backbone.dim, 10)

    def forward(self, batch):
        features = self.backbone(batch["input_ids"], batch["attention_mask"])
        return Output(self.out(features), features, batch["labels"])


class ReadNumber(Kind):
    name, scenarios, Data = "read_number", ("read_number",), NumberData
    matrices = {"exact": ("exact", "higher"), "error": ("mae", "lower")}

    def build_stream(self):
        rng, n = random.Random(self.cfg.seed), self.cfg.data.per_number
        numbers = [[k for k in range(t * 5, t * 5 + 5) for _ in range(n)] for t in range(2)]
        texts = [[f"the number {WORDS[k]}" + "!" * rng.randint(0, 3) for k in ks] for ks in numbers]
        return Stream("read_number", [Task(t, f"{t * 5}-{t * 5 + 4}", [], texts[t], numbers[t], texts[t], numbers[t])
                                      for t in range(2)], [])

    def build_learner(self, backbone, head):
        self.learner = Reader(backbone)
        return self.learner

    def inputs(self, task, split):
        texts, labels = task.train_texts, torch.tensor(task.train_labels)      # the test set is the training set
        return Inputs(labels, torch.full_like(labels, task.index), torch.arange(len(labels)),
                      tokens=self.learner.backbone.tokenize(texts))

    @torch.no_grad()
    def evaluate(self, method, seen):
        exact, error = [], []
        for task in self.stream.tasks:
            batch = method.ctx.batch(self.inputs(task, "test"))
            guess = self.learner(batch).logits.argmax(-1)
            exact.append((guess == batch["labels"]).float().mean().item())
            error.append((guess - batch["labels"]).abs().float().mean().item())
        return {"exact": exact, "error": error}


@pytest.mark.parametrize("method", [{"name": "seq"}, {"name": "replay", "replay": {"size": 10}}])
def test_a_third_kind_runs_through_the_engine(tmp_path, monkeypatch, method):
    monkeypatch.setitem(KINDS, ReadNumber.name, ReadNumber)
    cfg = {**tiny_config(method=method, train={"epochs": 3}), "data": {"scenario": "read_number", "name": "toy"}}
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    exact, error = raw["matrices"]["exact"], raw["matrices"]["error"]
    assert raw["kind"] == "read_number" and error["direction"] == "lower" and exact["direction"] == "higher"
    E = error["values"]
    assert len(E) == 2 and len(E[0]) == 2 and len(error["baseline"]) == 2
    assert raw["metrics"]["mae"] == pytest.approx((E[1][0] + E[1][1]) / 2)
    assert raw["metrics"]["forgetting_mae"] == pytest.approx(E[1][0] - E[0][0])     # lower is better: a rise
    assert raw["metrics"]["bwt"] == pytest.approx(exact["values"][1][0] - exact["values"][0][0])
    assert raw["metric_directions"]["bwt_mae"] == "lower" and raw["exact_matrix"] == exact["values"]
