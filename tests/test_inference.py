"""Dataset inference: each feature against a direct computation on a tiny model, the statistics
against scipy, hand values and simulation (the cross-fit size, the power estimate), no leakage from
the tested halves, joining, the verdicts, and the CLI's errors and outputs."""
from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from scipy import stats

from conftest import SHARED_DATA
from test_cli import cli
from forgetlab.config import LMConfig
from forgetlab.inference import dataset_test, infer, join_texts
from forgetlab.inference.features import CausalLM, feature_names, max_k, min_k, perturb, text_features, zlib_ratio
from forgetlab.inference.stats import (Normaliser, auc, combine_p, cross_fit_p, cross_fit_test, fit_logistic,
                                       fold_test, power_at, split_halves, split_test, texts_needed,
                                       texts_needed_from_curve, verdict, welch_t_test)
from forgetlab.models.bpe import train_bpe
from forgetlab.models.lm_families import build_lm

TEXTS = ["First Citizen: Before we proceed any further, hear me speak.", "All: Speak, speak.",
         "You are all resolved rather to die than to famish?"]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A nano GPT-2 with a BPE tokenizer, saved as a Hugging Face folder."""
    folder = tmp_path_factory.mktemp("lm")
    tok = train_bpe([(SHARED_DATA / "tinyshakespeare" / "train.txt").read_text()[:50_000]], vocab_size=400)
    torch.manual_seed(0)
    model = build_lm(LMConfig(size="nano", seq_len=64), len(tok), tok.pad_token_id, tok.convert_tokens_to_ids("<|endoftext|>"))
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def direct_logprobs(lm: CausalLM, text: str) -> np.ndarray:
    """log p(token_t | before) for one unpadded text, start token first."""
    ids = torch.tensor([lm.start + lm.tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        logp = lm.model(input_ids=ids).logits[0].log_softmax(-1)
    return np.array([float(logp[t - 1, ids[0, t]]) for t in range(1, ids.size(1))])


def test_batched_token_logprobs_equal_direct_unpadded_ones(tiny_lm):
    lm = CausalLM(str(tiny_lm), batch_size=3, device="cpu")
    got = lm.token_logprobs(TEXTS)
    for text, lp in zip(TEXTS, got):
        want = direct_logprobs(lm, text)
        assert len(lp) == len(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
        np.testing.assert_allclose(lp, want, atol=1e-5)


def test_min_k_max_k_zlib_by_hand():
    logp = np.array([-1.0, -2.0, -3.0, -4.0])
    assert min_k(logp, 0.5) == -3.5 and max_k(logp, 0.5) == -1.5
    assert min_k(logp, 0.1) == -4.0 and max_k(logp, 0.1) == -1.0     # ceil(0.4) = 1 token
    assert zlib_ratio(logp, "abc") == pytest.approx(2.5 / len(zlib.compress(b"abc")))


def test_feature_matrix_columns_match_direct_computations(tiny_lm):
    lm = CausalLM(str(tiny_lm), device="cpu")
    ref = CausalLM(str(tiny_lm), device="cpu")
    X = text_features(lm, TEXTS, [ref], seed=7)
    names = feature_names(1)
    assert X.shape == (3, len(names))
    col = {n: X[:, j] for j, n in enumerate(names)}
    for i, text in enumerate(TEXTS):
        lp = direct_logprobs(lm, text)
        assert col["log_ppl"][i] == pytest.approx(-lp.mean(), abs=1e-5)
        k = max(1, math.ceil(0.2 * len(lp)))
        assert col["min_k_20"][i] == pytest.approx(np.sort(lp)[:k].mean(), abs=1e-5)
        assert col["max_k_20"][i] == pytest.approx(np.sort(lp)[-k:].mean(), abs=1e-5)
        lower = direct_logprobs(lm, text.lower())
        assert col["pert_lowercase"][i] == pytest.approx(-lower.mean() + lp.mean(), abs=1e-5)
        swapped = perturb(TEXTS, "swap", 7)[i]
        assert col["pert_swap"][i] == pytest.approx(-direct_logprobs(lm, swapped).mean() + lp.mean(), abs=1e-5)
    np.testing.assert_allclose(col["ref_0"], 0.0, atol=1e-6)          # the same model as reference


def test_perturbations_do_what_they_say():
    text = "Speak speak speak speak speak speak"
    assert perturb([text], "uppercase", 0) == [text.upper()]
    assert perturb([text], "whitespace", 0) == [text.replace(" ", "  ")]
    swapped, = perturb([text * 5], "swap", 0)
    assert sorted(swapped) == sorted(text * 5) and swapped != text * 5
    deleted, = perturb([text * 5], "delete", 0)
    assert len(deleted) < len(text * 5)
    assert perturb([text], "delete", 3) == perturb([text], "delete", 3)          # seeded


def test_welch_t_test_matches_scipy():
    a = np.array([2.1, 3.4, 1.9, 5.6, 4.4, 3.3])
    b = np.array([1.0, 2.2, 0.4, 1.7, 2.9])
    t, df, p = welch_t_test(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    assert t == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue)
    va, vb = a.var(ddof=1) / 6, b.var(ddof=1) / 5
    assert df == pytest.approx((va + vb) ** 2 / (va**2 / 5 + vb**2 / 4))


def test_auc_by_hand():
    # pairs (3,1) win, (3,3) tie, (4,1) win, (4,3) win: 3.5 of 4
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 3.0])) == 0.875
    assert auc(np.array([0.0]), np.array([1.0])) == 0.0


def test_normaliser_clips_at_quantiles_then_standardises():
    X = np.arange(101, dtype=float)[:, None]              # 0..100: 1% and 99% quantiles are 1 and 99
    norm = Normaliser(0.01).fit(X)
    assert (norm.low[0], norm.high[0]) == (1.0, 99.0)
    clipped = np.clip(X, 1, 99)
    np.testing.assert_allclose(norm.transform(np.array([[-50.0], [50.0]])),
                               (np.array([[1.0], [50.0]]) - clipped.mean()) / clipped.std())


def test_logistic_aggregator_reaches_the_penalised_optimum():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=60) > 0).astype(float)
    w = fit_logistic(X, y, l2=2.0)
    A = np.hstack([np.ones((60, 1)), X])
    p = 1 / (1 + np.exp(-A @ w))
    grad = A.T @ (p - y) + 2.0 * np.r_[0.0, w[1:]]
    assert np.abs(grad).max() < 1e-8
    assert w[1] > 0 and abs(w[1]) > abs(w[2]) and abs(w[1]) > abs(w[3])


def test_combine_p_is_twice_the_median_capped_at_one():
    assert combine_p([0.01, 0.02, 0.5]) == pytest.approx(0.04)
    assert combine_p([0.6, 0.7]) == 1.0
    assert combine_p([0.3]) == 0.3


def test_aggregator_sees_only_the_first_halves():
    rng = np.random.default_rng(1)
    S, R = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    base = split_test(S, R, seed=3)
    (s_fit, s_test), (r_fit, r_test) = split_halves(40, 3, 0), split_halves(40, 3, 1)
    S2, R2 = S.copy(), R.copy()
    S2[s_test] += 5.0                                      # change only the tested halves
    R2[r_test] *= 3.0
    moved = split_test(S2, R2, seed=3)
    np.testing.assert_array_equal(moved.weights, base.weights)
    assert moved.p_value != base.p_value


def test_nothing_from_the_testing_halves_reaches_the_fit():
    """Change the testing halves' features and move rows between their sides (their labels): the
    normaliser, the cross-validated strength and effect size and the weights are bit-for-bit the
    same, and the tested scores are exactly w0 + transform(x) · w."""
    rng = np.random.default_rng(4)
    s_fit, r_fit, s_test, r_test = (rng.normal(size=(50, 6)) for _ in range(4))
    s_fit[:, 0] += 0.8
    base = fold_test(s_fit, r_fit, s_test, r_test, seed=5)
    other = fold_test(s_fit, r_fit, np.vstack([r_test[:10], s_test * 7 + 3]), r_test[10:] - 2, seed=5)
    for a, b in [(base, other)]:
        for name in ("low", "high", "mean", "std"):
            np.testing.assert_array_equal(getattr(a.normaliser, name), getattr(b.normaliser, name))
        np.testing.assert_array_equal(a.weights, b.weights)
        assert (a.l2, a.fit_effect_size) == (b.l2, b.fit_effect_size)
    w, norm = base.weights, base.normaliser
    np.testing.assert_array_equal(base.suspect_scores, w[0] + norm.transform(s_test) @ w[1:])
    np.testing.assert_array_equal(base.reference_scores, w[0] + norm.transform(r_test) @ w[1:])


def test_cross_fit_tests_each_half_with_the_other_halfs_fit():
    rng = np.random.default_rng(6)
    S, R = rng.normal(size=(30, 4)), rng.normal(size=(40, 4))
    cf = cross_fit_test(S, R, seed=2)
    (sa, sb), (ra, rb) = split_halves(30, 2, 0), split_halves(40, 2, 1)
    two = fold_test(S[sb], R[rb], S[sa], R[ra], seed=2)
    np.testing.assert_array_equal(cf.folds[1].weights, two.weights)
    assert len(cf.folds[0].suspect_scores) == 15 and len(cf.folds[1].reference_scores) == 20
    assert cf.p_value == min(1.0, 2 * min(cf.folds[0].p_value, cf.folds[1].p_value))


def test_cross_fit_p_is_bonferroni():
    assert cross_fit_p(0.01, 0.2) == pytest.approx(0.02)
    assert cross_fit_p(0.6, 0.7) == 1.0


def test_cross_fit_keeps_its_size_under_a_simulated_null():
    """2,000 null data sets of 40 + 40 rows and 17 features (one strength, so no inner CV, for speed):
    each fold alone, and the cross-fit combination, reject 5% ± 1.5 points (the issue's tolerance). The
    folds are nearly the same test, so Bonferroni's 2·min rejects between α/2 (folds identical) and α
    (folds independent): here 3.95%, conservative, never above α beyond the draws' noise."""
    rng = np.random.default_rng(7)
    folds, combined = [], []
    for i in range(2000):
        cf = cross_fit_test(rng.normal(size=(40, 17)), rng.normal(size=(40, 17)), seed=i, grid=(1.0,))
        folds.append(cf.folds[0].p_value)
        combined.append(cf.p_value)
    assert 0.035 <= np.mean(np.array(folds) < 0.05) <= 0.065
    assert 0.035 <= np.mean(np.array(combined) < 0.05) <= 0.065


def test_power_estimate_by_hand():
    # 4 · ((z_0.975 + z_0.8) / 0.5)² = 4 · (1.95996 + 0.84162)² / 0.25 = 125.58
    assert texts_needed(0.5, 0.05, 0.8) == pytest.approx(125.58, abs=0.01)
    assert power_at(125.58, 0.5, 0.05) == pytest.approx(0.8, abs=1e-4)
    assert texts_needed(0.0, 0.05) == math.inf and texts_needed(-0.2, 0.05) == math.inf


def test_power_estimate_matches_simulated_effects_of_known_size():
    """A mean shift of 0.4 in one of 3 features: at texts_needed(0.4) = 197 per side the cross-fit test
    (with its inner CV) rejects in about 80% of 200 draws, and the fitting halves' CV effect size is
    positive (below 0.4: the aggregator's weights are estimated)."""
    rng = np.random.default_rng(8)
    n = math.ceil(texts_needed(0.4, 0.05))
    assert n == 197
    rejected, fit_d = [], []
    for i in range(200):
        S, R = rng.normal(size=(n, 3)), rng.normal(size=(n, 3))
        S[:, 0] += 0.4
        cf = cross_fit_test(S, R, seed=i)
        rejected.append(cf.p_value < 0.05)
        fit_d.append(cf.fit_effect_size)
    assert 0.7 <= np.mean(rejected) <= 0.9
    assert 0.25 <= np.mean(fit_d) <= 0.45


def test_texts_needed_from_the_p_curve_by_hand():
    # log p = -n/100: the line reaches log 0.05 at n = 100 · ln 20 = 299.57
    assert texts_needed_from_curve([100, 200, 300], list(np.exp([-1.0, -2.0, -3.0])), 0.05) == pytest.approx(299.57, abs=0.01)
    assert texts_needed_from_curve([100, 200, 300], [0.2, 0.5, 0.9], 0.05) == math.inf


def test_three_verdicts():
    assert verdict(0.01, 0.05, 100, 500) == "member"
    assert verdict(0.3, 0.05, 1000, 500) == "no evidence"                 # enough power: not trained on, as far as can be seen
    assert verdict(0.3, 0.05, 100, math.inf) == "no evidence"             # no effect seen to size a test by
    assert verdict(0.3, 0.05, 100, 1234) == "inconclusive: about 1,300 texts per side would be needed"
    # joined units of 5 texts on average: 1,234 units are 6,170 texts
    assert verdict(0.3, 0.05, 100, 1234, texts_per_unit=5.0) == "inconclusive: about 6,200 texts per side would be needed"


def test_join_texts_by_hand():
    assert join_texts(["ab", "cd", "efg", "h"], 5) == ["ab cd", "efg h"]
    assert join_texts(["abcdef", "x"], 5) == ["abcdef x"]                 # a short remainder joins the last unit
    assert join_texts(["a", "b"], 0) == ["a", "b"]


def test_a_signal_only_in_the_fitting_halves_is_not_detected():
    """Had the test scored the halves the aggregator was fitted on, this planted signal would give p ≈ 0."""
    rng = np.random.default_rng(2)
    S, R = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    (s_fit, _), (r_fit, _) = split_halves(200, 0, 0), split_halves(200, 0, 1)
    S[s_fit, 0] += 2.0
    assert split_test(S, R, seed=0).p_value > 0.05
    S2, R2 = rng.normal(size=(200, 4)), rng.normal(size=(200, 4))
    S2[:, 0] += 1.0                                         # a real shift, in both halves
    assert split_test(S2, R2, seed=0).p_value < 0.01


def test_null_features_give_calibrated_p_values():
    rng = np.random.default_rng(3)
    ps = [split_test(rng.normal(size=(60, 17)), rng.normal(size=(60, 17)), seed=s).p_value for s in range(200)]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09       # 200 draws: 5% ± about 3 points
    assert 0.4 <= np.median(ps) <= 0.6


def write_texts(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_memorised_texts_are_detected_and_outputs_written(tmp_path):
    """A nano GPT trained many epochs on 40 texts: those texts against 40 unseen ones."""
    from forgetlab.config import load_pretrain_config
    from forgetlab.data.corpus import chunk_text
    from forgetlab.train.pretrain import pretrain

    texts = chunk_text((SHARED_DATA / "tinyshakespeare" / "train.txt").read_text()[:60_000], 200)[:80]
    members = write_texts(tmp_path / "members.jsonl", texts[:40])
    others = write_texts(tmp_path / "others.jsonl", texts[40:])
    cfg = load_pretrain_config({"corpus": {"path": str(members), "valid_path": str(others)},
                                "tokenizer": {"vocab_size": 400}, "model": {"size": "tiny", "seq_len": 64},
                                "train": {"epochs": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 10}})
    model = pretrain(cfg, tmp_path / "pt")["checkpoints"][-1]["path"]
    res = infer(model, members, others, n=40, out=tmp_path / "out")
    assert res.p_value < 0.01 and res.effect_size > 0.5
    assert res.feature_auc["log_ppl"] < 0.3                # members: lower perplexity
    raw = json.loads((tmp_path / "out" / "inference.json").read_text())
    assert raw["p_value"] == res.p_value and raw["n"] == {"suspect": 40, "reference": 40} and raw["verdict"] == "member"
    assert [s["n"] for s in raw["p_by_size"]] == [10, 20, 40]
    assert len(raw["scores"]["suspect"]) == 20                # the tested half
    assert "p-value" in (tmp_path / "out" / "report.html").read_text()


def test_cli_writes_a_page_with_escaped_names(tiny_lm, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "<b>data"
    folder.mkdir()
    texts = chunk = [f"line {i}: {TEXTS[i % 3]}" for i in range(24)]
    sus = write_texts(folder / "s.jsonl", chunk[:12])
    ref = write_texts(folder / "r.jsonl", texts[12:])
    code, out, err = cli(monkeypatch, capsys, "infer", "--model", tiny_lm, "--suspect", sus, "--reference", ref,
                         "--out", tmp_path / "o", "--repeats", "3")
    assert code == 0, err
    assert "p-value" in out and "log_ppl" in out
    raw = json.loads((tmp_path / "o" / "inference.json").read_text())
    assert len(raw["split_p_values"]) == 3 and raw["p_value"] == combine_p(raw["split_p_values"])
    page = (tmp_path / "o" / "report.html").read_text()
    assert "&lt;b&gt;data" in page and "<b>data" not in page


@pytest.mark.parametrize("case, expect", [
    ("few", "--n 5: at least 8 texts per side are needed"),
    ("empty", "s.jsonl:3: empty text"),
    ("encoder", "not a causal LM (BertModel)"),
    ("missing", "nothing.jsonl: file not found"),
])
def test_bad_input_is_one_line_exit_2(tiny_lm, tmp_path, monkeypatch, capsys, case, expect):
    from transformers import BertConfig

    rows = [f"text number {i}" for i in range(12)]
    if case == "empty":
        rows[2] = "  "
    sus = tmp_path / "s.jsonl"
    sus.write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    ref = write_texts(tmp_path / "r.jsonl", [f"other {i}" for i in range(12)])
    model = tiny_lm
    if case == "encoder":
        model = tmp_path / "bert"
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                   architectures=["BertModel"]).save_pretrained(str(model))
    args = ["infer", "--model", model, "--suspect", tmp_path / "nothing.jsonl" if case == "missing" else sus,
            "--reference", ref, "--out", tmp_path / "o"]
    if case == "few":
        args += ["--n", "5"]
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and expect in err
    assert not (tmp_path / "o" / "inference.json").exists()


def test_n_caps_the_texts_and_joining_counts_units(tiny_lm):
    sus = [f"line {i}: {TEXTS[i % 3]}" for i in range(30)]
    ref = [f"row {i}: {TEXTS[(i + 1) % 3]}" for i in range(20)]
    assert infer(str(tiny_lm), sus, ref, n=12, show_progress=False).raw["texts"] == {"suspect": 12, "reference": 12}
    res = infer(str(tiny_lm), sus, ref, n=500, show_progress=False)               # a cap, not a demand
    every = res.raw
    again = dataset_test(res.features["suspect"], res.features["reference"], seed=0)
    assert (again["p_value"], again["verdict"]) == (res.p_value, res.verdict)
    assert every["texts"] == {"suspect": 30, "reference": 20} and every["n"] == {"suspect": 30, "reference": 20}
    joined = infer(str(tiny_lm), sus, ref, join_min_chars=80, seed=3, show_progress=False).raw
    rng = np.random.default_rng(3)
    units = {side: len(join_texts([t[i] for i in rng.permutation(len(t))], 80)) for side, t in (("suspect", sus), ("reference", ref))}
    assert joined["n"] == units and units["suspect"] < 30 and joined["join_min_chars"] == 80
    assert joined["verdict"] in ("member", "no evidence") or joined["verdict"].startswith("inconclusive: about ")
