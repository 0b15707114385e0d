"""Forgetting diagnostics: CKA, probes, the decomposition, within-task accuracy, error shares."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

from forgetlab.api import run
from forgetlab.eval.diagnostics import (decomposition, error_share, linear_cka, trace_overlap,
                                        within_task_accuracy)
from forgetlab.eval.probe import fit_probe


def test_cka_is_one_on_itself_and_invariant_to_rotation_and_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x.double() @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 7.5 * x) == pytest.approx(1.0, abs=1e-12)
    y = torch.randn(200, 16, generator=g)
    assert linear_cka(x, y) < 0.2 and linear_cka(x, y) == pytest.approx(linear_cka(y, x))
    # by hand: x = [a, b] columns with y = a only: CKA = ||a^T a||^2 / (||X^T X||_F ||a^T a||) = |a|^2 / ||X^T X||_F
    a, b = torch.tensor([1.0, -1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 2.0, -2.0])
    assert linear_cka(torch.stack([a, b], 1), a[:, None]) == pytest.approx(2.0 / (2.0 ** 2 + 8.0 ** 2) ** 0.5)


def test_trace_overlap_of_a_subspace_with_itself_and_an_orthogonal_one():
    g = torch.Generator().manual_seed(1)
    first = torch.zeros(100, 4)
    first[:, :2] = torch.randn(100, 2, generator=g)
    second = torch.zeros(100, 4)
    second[:, 2:] = torch.randn(100, 2, generator=g)
    assert trace_overlap(first, first) == pytest.approx(1.0)
    assert trace_overlap(first, 3 * first) == pytest.approx(1.0)
    assert trace_overlap(first, second) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("kind", ["linear", "cosine", "prototype"])
def test_probe_recovers_a_linearly_separable_problem_exactly(kind):
    g = torch.Generator().manual_seed(2)
    centres = torch.eye(3) * 4.0                       # three classes along three axes
    y = torch.arange(3).repeat(40)
    x = centres[y] + 0.3 * torch.randn(120, 3, generator=g)
    probe = fit_probe(x, y + 2, num_classes=6, kind=kind, epochs=100, lr=0.05)   # class ids 2..4 of 6
    assert (probe.scores(x).argmax(-1) == y + 2).all()
    assert probe.weight[[0, 1, 5]].abs().sum() == 0    # classes never seen have no weights
    with torch.inference_mode():                        # the engine calls it in inference mode
        again = fit_probe(x, y + 2, num_classes=6, kind=kind, epochs=100, lr=0.05)
    assert torch.equal(again.weight, probe.weight)     # deterministic for a seed


def test_decomposition_adds_up_to_the_observed_drop():
    R = [[0.9, 0.0, 0.0], [0.5, 0.8, 0.0], [0.2, 0.3, 0.95]]
    P = [[0.92, 0.0, 0.0], [0.90, 0.85, 0.0], [0.85, 0.80, 0.9]]
    parts = decomposition(R, P)
    assert [p["task"] for p in parts] == [0, 1]
    assert parts[0]["observed_drop"] == pytest.approx(0.7) and parts[0]["representation_loss"] == pytest.approx(0.07)
    assert parts[0]["classifier_drift"] == pytest.approx(0.63)
    for p in parts:
        assert p["representation_loss"] + p["classifier_drift"] == pytest.approx(p["observed_drop"])


def test_within_task_accuracy_and_where_errors_land():
    # 4 examples of a task with classes {0, 1}; classes {2, 3} belong to the newest task
    logits = torch.tensor([[2.0, 1.0, 5.0, 0.0], [0.0, 1.0, 0.0, 9.0], [3.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 2.0]])
    labels = torch.tensor([0, 1, 0, 1])
    assert within_task_accuracy(logits, labels, [0, 1]) == pytest.approx(3 / 4)   # the last picks 0 among {0,1}
    pred = logits.argmax(-1)                                                   # [2, 3, 0, 3]: 3 errors
    assert error_share(pred, labels, [2, 3]) == (3, 3)
    assert error_share(pred, labels, [3]) == (2, 3)


def test_a_run_with_probe_and_cka_writes_p_and_the_diagnostics(tmp_path):
    results = run(tiny_config(eval={"probe": True, "cka": True, "cka_examples": 12}),
                  out=tmp_path / "run", store=tmp_path / "s.db")
    P, R = np.asarray(results.raw["probe_matrix"]), results.accuracy_matrix
    d = results.raw["diagnostics"]
    T = len(R)
    assert P.shape == (T, T) and np.all(P[np.triu_indices(T, 1)] == 0)       # unseen classes: 0, as R
    assert results.metrics["probe_acc"] == pytest.approx(P[-1].mean())
    for part in d["decomposition"]:
        j = part["task"]
        assert part["observed_drop"] == pytest.approx(R[j, j] - R[-1, j])
        assert part["representation_loss"] == pytest.approx(P[j, j] - P[-1, j])
    W = d["within_task_matrix"]
    assert all(W[i][j] is None for i in range(T) for j in range(i + 1, T))
    assert all(W[i][j] >= R[i, j] - 1e-9 for i in range(T) for j in range(i + 1))   # fewer choices, never worse
    assert len(d["cka_to_initial"]) == T and all(0 < c <= 1 + 1e-9 for c in d["cka_to_initial"])
    assert d["newest_task_error_share"][0] is None and 0 <= d["newest_task_error_share"][-1] <= 1
    assert len(d["head_row_norms"]) == T and len(d["head_row_norms"][0]) == T
    assert d["summary"]["across_task_acc_old"] == pytest.approx(R[-1, :-1].mean())


def tiny_lm():
    from forgetlab.config import BackboneConfig
    from forgetlab.models.backbones import build_backbone

    torch.manual_seed(0)
    return build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=64)).eval()


def direct_logprobs(backbone, ids: list[int]) -> torch.Tensor:
    """Log-probabilities of one unpadded sequence, straight from the model's hidden states and its
    (tied) token embedding."""
    with torch.no_grad():
        hidden = backbone.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return (hidden @ backbone.model.get_input_embeddings().weight.T).log_softmax(-1)


def test_perplexity_matches_a_direct_computation_from_the_logits():
    from forgetlab.eval.retention import perplexity

    lm, texts = tiny_lm(), ["The cat sat on the mat.", "Dogs bark at night!", "A third, longer line of text here."]
    ids = [b + 3 for b in "\n".join(texts).encode()][:50]        # the byte tokenizer: byte + 3, BOS dropped
    nll, count = 0.0, 0
    for start in range(0, 50, 16):                                # windows of 16 tokens, the last one short
        window = ids[start: start + 16]
        logp = direct_logprobs(lm, window)
        nll -= sum(float(logp[p - 1, window[p]]) for p in range(1, len(window)))
        count += len(window) - 1
    with torch.no_grad():
        assert perplexity(lm, texts, window=16, max_tokens=50, device=torch.device("cpu")) == pytest.approx(
            float(np.exp(nll / count)), rel=1e-5)


def test_log_likelihood_scoring_picks_the_choice_with_the_highest_summed_log_probability():
    from forgetlab.eval.retention import choice_logprobs, qa_accuracy

    lm, context = tiny_lm(), "Question: which?\nAnswer:"
    choices = ["red", "a much longer answer", "xyz", "no"]
    ctx = [1] + [b + 3 for b in context.encode()]
    expected = []
    for choice in choices:
        cont = [b + 3 for b in (" " + choice).encode()]
        logp = direct_logprobs(lm, ctx + cont)
        expected.append(sum(float(logp[len(ctx) + k - 1, t]) for k, t in enumerate(cont)))
    with torch.no_grad():
        got = choice_logprobs(lm, context, choices, window=64, device=torch.device("cpu"))
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-4)
    best = int(np.argmax(expected))
    items = [{"question": "which?", "choices": choices, "answer": best},
             {"question": "which?", "choices": choices, "answer": (best + 1) % 4}]
    with torch.no_grad():
        assert qa_accuracy(lm, items, window=64, device=torch.device("cpu")) == 0.5


def test_retention_is_measured_before_the_stream_and_after_each_task(tmp_path):
    retention = {"max_tokens": 200, "max_items": 8, "max_length": 32}
    results = run(tiny_config(eval={"retention": retention}), out=tmp_path / "run", store=tmp_path / "s.db")
    r = results.raw["retention"]                       # one record, the same for every kind
    T = len(results.tasks)
    assert len(r["perplexity"]) == len(r["qa_accuracy"]) == T + 1
    assert all(p > 1 for p in r["perplexity"]) and all(0 <= a <= 1 for a in r["qa_accuracy"])
    assert r["perplexity_ratio"] == pytest.approx(r["perplexity"][-1] / r["perplexity"][0])
    assert r["qa_accuracy_change"] == pytest.approx(r["qa_accuracy"][-1] - r["qa_accuracy"][0])
    assert "retention" not in results.raw["diagnostics"]


def test_retention_on_an_encoder_is_a_user_error(tmp_path):
    from forgetlab.errors import UserError

    with pytest.raises(UserError, match="eval.retention: measures a causal LM's general ability"):
        run(tiny_config(backbone={"arch": "bert"}, eval={"retention": {}}), out=tmp_path / "r", store=tmp_path / "s.db")


def test_per_layer_probes_and_the_last_layer_equals_the_main_probe(tmp_path):
    results = run(tiny_config(eval={"probe": True, "probe_layers": [0, -1]}), out=tmp_path / "run",
                  store=tmp_path / "s.db")
    by_layer = results.raw["diagnostics"]["probe_matrix_by_layer"]
    assert set(by_layer) == {"0", "-1"}
    assert np.allclose(by_layer["-1"], results.raw["probe_matrix"], atol=1e-6)   # the same features, the same probe
    assert results.raw["diagnostics"]["summary"]["probe_acc_by_layer"]["-1"] == pytest.approx(results.metrics["probe_acc"])
    from forgetlab.errors import UserError

    with pytest.raises(UserError, match=r"eval.probe_layers: \[7\] out of range for a 1-layer backbone"):
        run(tiny_config(eval={"probe_layers": [7]}), out=tmp_path / "bad", store=tmp_path / "s.db")
