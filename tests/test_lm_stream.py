"""Language-modelling streams: corpora as tasks, the perplexity matrix, its metrics, the report,
reproducibility, resume and config errors. Nano GPT-2-style models on small token budgets."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import forgetlab
from conftest import SHARED_DATA, killed_and_resumed
from forgetlab.experiment import load_config
from forgetlab.data.lm_stream import build_lm_stream
from forgetlab.engine import Engine
from forgetlab.eval.metrics import matrix_metrics, metric_direction
from forgetlab.eval.retention import perplexity
from forgetlab.kinds.language_modeling import LanguageModeling
from forgetlab.store import Store
from test_cli import assert_user_error, cli

WINDOW, EVAL_TOKENS = 32, 1024


def lm_config(**sections) -> dict:
    """Tiny Shakespeare then WikiText-2 on a nano GPT-2: enough steps at a high enough learning rate
    that each task's perplexity falls far below the untrained model's (about 259, the byte vocabulary)."""
    cfg = {
        "seed": 0,
        "backbone": {"arch": "gpt2", "size": "nano", "max_length": WINDOW},
        "data": {"scenario": "language_modeling", "sequence": ["tinyshakespeare", "wikitext2"], "order_seed": None,
                 "max_train_tokens": 4096, "max_eval_tokens": EVAL_TOKENS},
        "method": {"name": "seq"},
        "train": {"max_steps": 30, "batch_size": 8, "lr_backbone": 3e-3, "num_threads": 1, "progress": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture(autouse=True)
def _restore_threads():
    """Runs here use one thread (``train.num_threads``); the process's count comes back after each test."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# -- metrics of a matrix where lower is better, by hand ------------------------------------------
P = [[10.0, 40.0, 50.0],
     [8.0, 20.0, 45.0],
     [15.0, 25.0, 30.0]]
B = [100.0, 80.0, 60.0]


def test_perplexity_metrics_by_hand():
    m = matrix_metrics(P, B, "ppl", "lower")
    assert m["ppl"] == pytest.approx((15 + 25 + 30) / 3)
    assert m["avg_incremental_ppl"] == pytest.approx((10 + (8 + 20) / 2 + (15 + 25 + 30) / 3) / 3)
    assert m["learning_ppl"] == pytest.approx((10 + 20 + 30) / 3)
    assert m["bwt_ppl"] == pytest.approx(((15 - 10) + (25 - 20)) / 2)            # positive: forgotten
    assert m["fwt_ppl"] == pytest.approx(((40 - 80) + (45 - 60)) / 2)            # negative: helped
    assert m["forgetting_ppl"] == pytest.approx(((15 - 8) + (25 - 20)) / 2)      # against the best (lowest) earlier


def test_nll_metrics_are_the_same_formulas_on_log_perplexity():
    N = np.log(P)
    m = matrix_metrics(N, np.log(B), "nll", "lower")
    assert math.exp(m["nll"]) == pytest.approx((15 * 25 * 30) ** (1 / 3))      # geometric mean of the last row
    assert m["bwt_nll"] == pytest.approx((math.log(15 / 10) + math.log(25 / 20)) / 2)
    assert m["forgetting_nll"] == pytest.approx((math.log(15 / 8) + math.log(25 / 20)) / 2)
    assert m["fwt_nll"] == pytest.approx((math.log(40 / 80) + math.log(45 / 60)) / 2)


def test_one_task_gives_none_and_directions_are_stated():
    m = matrix_metrics([[12.0]], [100.0], "ppl", "lower")
    assert m["ppl"] == 12.0 and m["bwt_ppl"] is None and m["fwt_ppl"] is None and m["forgetting_ppl"] is None
    assert {metric_direction(k, "lower") for k in m} == {"lower"}
    assert metric_direction("forgetting") == metric_direction("forgetting_acc") == metric_direction("intransigence") == "lower"
    assert metric_direction("acc") == metric_direction("bwt") == metric_direction("bwt_probe_acc") == "higher"


# -- streams -----------------------------------------------------------------------------------
def test_gutenberg_splits_into_one_task_per_book_with_held_out_tails():
    cfg = load_config(lm_config(data={"sequence": None, "name": "gutenberg_nltk", "max_tasks": 3})).data
    stream = build_lm_stream(cfg)
    assert [t.name for t in stream.tasks] == ["Emma", "Sense and Sensibility", "Poems"]
    text = (SHARED_DATA / "gutenberg_nltk" / "train.txt").read_text()
    for task in stream.tasks:
        train, held_out = task.train_texts[0], task.test_texts[0]
        assert train + held_out in text and "[Emma by Jane Austen 1816]" not in train
        assert len(held_out) == pytest.approx(0.05 * len(train + held_out), abs=1)
    shuffled = [t.name for t in build_lm_stream(cfg.model_copy(update={"order_seed": 1, "max_tasks": None})).tasks]
    assert len(shuffled) == 11 and shuffled[:3] != ["Emma", "Sense and Sensibility", "Poems"]


def test_text_file_corpus_holds_out_its_tail(tmp_path):
    (tmp_path / "notes.txt").write_text("abcdefghij" * 100)
    cfg = load_config(lm_config(data={"sequence": [str(tmp_path / "notes.txt")], "valid_fraction": 0.1})).data
    [task] = build_lm_stream(cfg).tasks
    assert task.name == "notes" and len(task.train_texts[0]) == 900 and len(task.test_texts[0]) == 100


# -- end to end --------------------------------------------------------------------------------
def test_lm_stream_run_gives_a_perplexity_matrix_that_learns_each_task(tmp_path):
    res = forgetlab.run(lm_config(), out=tmp_path / "run")
    raw = json.loads((tmp_path / "run" / "results.json").read_text())
    assert raw["status"] == "completed" and raw["scenario"] == "language_modeling"
    assert raw["tasks"] == ["tinyshakespeare", "wikitext2"]
    P, N, b = np.array(raw["perplexity_matrix"]), np.array(raw["nll_matrix"]), np.array(raw["baseline_perplexity"])
    assert P.shape == N.shape == (2, 2) and np.allclose(P, np.exp(N)) and np.allclose(b, np.exp(raw["baseline_nll"]))
    assert 200 < b.min() and b.max() < 330                       # untrained: about uniform over 259 byte tokens
    assert P[0, 0] < b[0] / 3 and P[1, 1] < b[1] / 3            # each task learnt when it is trained
    R = res.accuracy_matrix                                      # next-token accuracy
    assert R.shape == (2, 2) and ((0 <= R) & (R <= 1)).all() and R[0, 0] > raw["baseline_accuracy"][0]
    metrics = raw["metrics"]
    assert metrics["bwt_ppl"] == pytest.approx(P[1, 0] - P[0, 0])
    assert metrics["fwt_ppl"] == pytest.approx(P[0, 1] - b[1])
    assert metrics["forgetting_ppl"] == pytest.approx(P[1, 0] - P[0, 0])
    assert metrics["nll"] == pytest.approx(N[1].mean()) and metrics["acc"] == pytest.approx(R[1].mean())
    assert raw["metric_directions"]["ppl"] == "lower" and raw["metric_directions"]["acc"] == "higher"
    assert raw["tokens"] == {"window": WINDOW, "train": [4096, 4096], "eval": [EVAL_TOKENS - EVAL_TOKENS // WINDOW] * 2}
    report = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>perplexity matrix (lower is better)</h2>" in report and "<td>bwt_ppl</td>" in report
    [row] = Store(tmp_path / "forgetlab.db").runs()
    assert row["status"] == "completed" and row["dataset"] == "tinyshakespeare+wikitext2"


def test_mean_nll_matches_an_independent_perplexity(tmp_path):
    cfg = load_config(lm_config())
    engine = Engine(cfg)
    raw = engine.run(tmp_path / "run", Store(tmp_path / "store.db"))
    backbone = engine.learner.backbone.eval()
    task = engine.stream.tasks[0]                  # Tiny Shakespeare's valid.txt, after the whole stream
    text = "\n".join(task.test_texts)
    ids = [byte + 3 for byte in text.encode("utf-8")][:EVAL_TOKENS]       # the byte tokenizer: byte + 3
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), WINDOW):
            window = torch.tensor([ids[start: start + WINDOW]])
            logp = F.log_softmax(backbone.lm_logits(window, torch.ones_like(window))[0, :-1].double(), -1)
            total -= logp.gather(1, window[0, 1:, None]).sum().item()
            count += window.size(1) - 1
    assert raw["perplexity_matrix"][-1][0] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert raw["perplexity_matrix"][-1][0] == pytest.approx(
        perplexity(backbone, task.test_texts, WINDOW, EVAL_TOKENS, torch.device("cpu")), rel=1e-5)


def test_same_config_same_numbers_and_resume_continues_exactly(tmp_path, monkeypatch):
    straight = forgetlab.run(lm_config(), out=tmp_path / "a").raw
    again = forgetlab.run(lm_config(), out=tmp_path / "b").raw
    assert straight["perplexity_matrix"] == again["perplexity_matrix"]
    assert straight["accuracy_matrix"] == again["accuracy_matrix"]

    resumed = killed_and_resumed(lm_config(), tmp_path / "c", LanguageModeling, monkeypatch, evaluations=2)
    assert resumed["perplexity_matrix"] == straight["perplexity_matrix"]


@pytest.mark.parametrize("method", [{"name": "replay", "replay": {"size": 16}}, {"name": "ewc", "lam": 100.0},
                                    {"name": "lora", "lr": 1e-2}, {"name": "freeze", "layers": 0}])
def test_methods_that_apply_to_lm_streams_run(tmp_path, method):
    cfg = lm_config(method=method, data={"max_train_tokens": 1024, "max_eval_tokens": 256},
                    train={"max_steps": 5})
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    P = np.array(raw["perplexity_matrix"])
    assert np.isfinite(P).all() and P[1, 1] < raw["baseline_perplexity"][1]


# -- config errors: one line, exit 2 -----------------------------------------------------------
def test_empirical_fisher_of_a_language_model_scores_each_windows_own_next_tokens():
    """F = mean over windows of (d/dθ Σ_t log p(x_{t+1} | x_{≤t}))², padding left out (targets -100)."""
    from forgetlab.config import BackboneConfig
    from forgetlab.kinds.language_modeling import LanguageModel
    from forgetlab.methods.components.importance import diagonal_fisher
    from forgetlab.models.backbones import build_backbone
    from forgetlab.train.batching import Inputs, make_batch

    torch.manual_seed(0)
    lm = LanguageModel(build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=16))).eval()
    windows = [[5, 9, 12, 7, 3], [8, 4, 6]]
    data = Inputs(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), torch.arange(2),
                  tokens=windows, targets=windows)
    weight = lm.backbone.model.wpe.weight
    got = diagonal_fisher(lm, {"wpe": weight}, data, lambda x: make_batch(x, torch.arange(len(x)), lm.backbone.pad_id,
                                                                         torch.device("cpu")), "empirical")["wpe"]
    expected = torch.zeros_like(weight)
    for w in windows:
        ids = torch.tensor([w])
        logp = F.log_softmax(lm.backbone.lm_logits(ids, torch.ones_like(ids))[0, :-1], -1)
        (grad,) = torch.autograd.grad(logp.gather(1, ids[0, 1:, None]).sum(), weight)
        expected += grad.pow(2) / len(windows)
    assert got.abs().sum() > 0 and torch.allclose(got, expected, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("edit, expect", [
    ({"data": {"sequence": ["tinyshakespeare", "shakespear"]}}, "data.sequence: unknown corpus 'shakespear'"),
    ({"method": {"name": "lwf"}}, "method.name: lwf does not support language_modeling streams"),
    ({"method": {"name": "freeze"}}, "method.layers: a whole frozen backbone"),
    ({"data": {"classes_per_task": 2}}, "data.classes_per_task: only for data.scenario: class_incremental"),
    ({"eval": {"probe": True}}, "eval.probe: not available on a language_modeling stream"),
    ({"backbone": {"arch": "bert"}}, "backbone: a language_modeling stream needs a causal LM"),
])
def test_bad_lm_configs_are_one_line_errors(tmp_path, monkeypatch, capsys, edit, expect):
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump(lm_config(**edit)))
    out_dir = tmp_path / "runs" / "r"
    message = assert_user_error(*cli(monkeypatch, capsys, "run", config, "--out", out_dir), out_dir)
    assert expect in message


def test_lm_keys_on_a_classification_stream_are_refused(tmp_path, monkeypatch, capsys):
    config = tmp_path / "cls.yaml"
    config.write_text(yaml.safe_dump({"backbone": {"arch": "gpt2", "size": "nano"},
                                      "data": {"name": "clinc150", "classes_per_task": 5, "max_train_tokens": 100}}))
    out_dir = tmp_path / "runs" / "r"
    message = assert_user_error(*cli(monkeypatch, capsys, "run", config, "--out", out_dir), out_dir)
    assert "data.max_train_tokens: only for data.scenario: language_modeling" in message
