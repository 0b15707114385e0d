"""forgetlab pretrain: the BPE tokenizer, the presets' sizes, the schedule and batches, and checkpoints
that reload to the same numbers."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import SHARED_DATA
from test_cli import cli
from forgetlab.config import LMConfig, PretrainConfig, load_pretrain_config
from forgetlab.data.corpus import chunk_text, corpus_splits
from forgetlab.models.backbones import PRESETS
from forgetlab.models.bpe import train_bpe
from forgetlab.models.lm_families import build_lm, gpt2_params, non_embedding_params
from forgetlab.models.lstm_lm import lstm_params
from forgetlab.train.pretrain import _batches, _lr, pretrain, token_stream, validation_perplexity

SHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "train.txt"


@pytest.fixture(scope="module")
def bpe():
    return train_bpe([SHAKESPEARE.read_text()[:100_000]], vocab_size=600)


@pytest.mark.parametrize("text", ["First Citizen:\nBefore we proceed any further, hear me speak.",
                                  "  leading and trailing spaces,\ttabs\n\n",
                                  "naïve café — 東京 🙂 ünïcödé never seen in training"])
def test_tokenizer_round_trips_text(bpe, text):
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert bpe.decode(ids) == text
    assert len(bpe) == 600


def test_tokenizer_merges_compress_the_training_text(bpe):
    text = SHAKESPEARE.read_text()[:5_000]
    ids = bpe(text, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(text.encode()) / 2          # merges learned: well under one token a byte


def test_gpt2_param_formula_by_hand():
    # V·d + P·d + L·(12d² + 13d) + 2d with V=100, P=8, d=4, L=1: 400 + 32 + 244 + 8
    assert gpt2_params(100, 8, 4, 1) == 684


@pytest.mark.parametrize("size", ["nano", "tiny", "small", "medium", "base"])
def test_each_gpt2_preset_has_the_parameters_it_claims(size):
    dim, layers, _ = PRESETS[size]
    model = build_lm(LMConfig(size=size, seq_len=64), vocab_size=1000, pad_id=0, eos_id=1)
    assert sum(p.numel() for p in model.parameters()) == gpt2_params(1000, 64, dim, layers)
    assert non_embedding_params(model) == layers * (12 * dim * dim + 13 * dim) + 2 * dim


def test_lstm_param_formula_by_hand_and_presets():
    # V·d + L·(8d² + 8d) with V=100, d=4, L=1: 400 + 128 + 32
    assert lstm_params(100, 4, 1) == 560
    for size in ("nano", "tiny", "small", "medium"):
        dim, layers, _ = PRESETS[size]
        model = build_lm(LMConfig(arch="lstm", size=size, seq_len=64), vocab_size=1000, pad_id=0, eos_id=1)
        assert sum(p.numel() for p in model.parameters()) == lstm_params(1000, dim, layers)
        assert model.lm_head.weight is model.model.embed_tokens.weight          # tied


def test_presets_span_more_than_twenty_times():
    counts = [gpt2_params(4096, 256, d, n) for d, n, _ in (PRESETS[s] for s in ("tiny", "small", "medium", "base"))]
    assert counts == sorted(counts) and counts[-1] / counts[0] > 20


def test_moe_active_mlp_parameters_match_the_dense_preset():
    cfg = LMConfig(arch="moe", size="small", seq_len=64, experts=4, experts_per_token=2)
    model = build_lm(cfg, vocab_size=1000, pad_id=0, eos_id=1)
    dim = PRESETS["small"][0]
    experts = model.model.layers[0].mlp.experts
    per_expert = sum(p.numel() for p in experts.parameters()) / cfg.experts
    # I = 8·d/(3·k) = 170.7 for d = 128, k = 2, rounded to a multiple of 8: 168; active 2·3·128·168
    assert per_expert == 3 * dim * 168
    assert per_expert * cfg.experts_per_token == pytest.approx(8 * dim * dim, rel=0.02)


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    cfg = load_pretrain_config({"corpus": {"name": "tinyshakespeare"},
                                "train": {"steps": 110, "lr": 1.0, "warmup_steps": 10, "min_lr_ratio": 0.1}})
    assert _lr(5, 110, cfg) == pytest.approx(0.5)
    assert _lr(10, 110, cfg) == pytest.approx(1.0)
    assert _lr(60, 110, cfg) == pytest.approx(0.1 + 0.9 * 0.5)       # half way: cos = 0
    assert _lr(110, 110, cfg) == pytest.approx(0.1)


def test_batches_are_whole_non_overlapping_windows_of_the_stream():
    ids = torch.arange(103)
    batches = _batches(ids, window=10, batch_size=4, seed=0)
    first_epoch = [next(batches) for _ in range(2)]            # 10 windows fit: 2 full batches an epoch
    rows = torch.cat(first_epoch)
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 10)) for r in rows)
    starts = sorted(int(r[0]) for r in rows)
    assert len(set(starts)) == 8 and len({s % 10 for s in starts}) == 1


def test_token_stream_ends_each_document_with_eos(bpe):
    ids = token_stream(bpe, ["ab", "cd"])
    eos = bpe.convert_tokens_to_ids("<|endoftext|>")
    assert ids.tolist().count(eos) == 2 and ids[-1] == eos
    assert bpe.decode([i for i in ids.tolist() if i != eos]) == "abcd"


def test_jsonl_corpus_holds_out_a_seeded_fraction(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(40)))
    cfg = PretrainConfig.model_validate({"corpus": {"path": str(path), "valid_fraction": 0.25}, "train": {"steps": 1}})
    train, valid = corpus_splits(cfg.corpus, seed=3)
    assert len(valid) == 10 and len(train) == 30
    assert sorted(train + valid) == sorted(f"document {i}" for i in range(40))
    assert corpus_splits(cfg.corpus, seed=3) == (train, valid)


def test_chunk_text_joins_whole_lines():
    chunks = chunk_text("aaaa\nbb\n\ncccccc\nd\ne", chars=6)
    assert chunks == ["aaaa\nbb", "cccccc"]                    # "d\ne" is a short tail, dropped


@pytest.mark.parametrize("arch", ["gpt2", "lstm", "moe"])
def test_checkpoints_reload_to_identical_logits_and_recorded_perplexity(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    from forgetlab.config import BackboneConfig
    from forgetlab.models.backbones import build_backbone

    cfg = load_pretrain_config({
        "seed": 0, "corpus": {"name": "tinyshakespeare", "max_train_chars": 60_000},
        "tokenizer": {"vocab_size": 500}, "model": {"arch": arch, "size": "nano", "seq_len": 32},
        "train": {"steps": 6, "batch_size": 4, "save_steps": [3], "eval_tokens": 256, "warmup_steps": 1,
                  "lr": 3e-3}})
    record = pretrain(cfg, tmp_path / "pt")
    assert [c["step"] for c in record["checkpoints"]] == [3, 6]
    assert [c["tokens"] for c in record["checkpoints"]] == [3 * 4 * 32, 6 * 4 * 32]
    assert json.loads((tmp_path / "pt" / "pretrain.json").read_text())["checkpoints"] == record["checkpoints"]
    last = record["checkpoints"][-1]
    model = AutoModelForCausalLM.from_pretrained(last["path"]).eval()
    again = AutoModelForCausalLM.from_pretrained(last["path"]).eval()
    ids = torch.randint(2, 500, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        assert torch.equal(logits, again(input_ids=ids).logits)
    # the reloaded weights give the perplexity recorded when they were saved
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(last["path"])
    _, valid = corpus_splits(cfg.corpus, cfg.seed)
    valid_ids = token_stream(tok, valid)[: cfg.train.eval_tokens + 1]
    assert validation_perplexity(model, valid_ids, 33, 4, torch.device("cpu")) == pytest.approx(last["valid_perplexity"], rel=1e-6)
    # and the checkpoint is a forgetlab run backbone whose LM logits are the same
    backbone = build_backbone(BackboneConfig(name=last["path"], max_length=32)).eval()
    with torch.no_grad():
        torch.testing.assert_close(backbone.lm_logits(ids, torch.ones_like(ids)), logits)
    assert backbone.causal and backbone.dim == PRESETS["nano"][0]
    assert math.isfinite(last["valid_perplexity"]) and last["valid_perplexity"] < 500


def test_same_seed_same_numbers(tmp_path):
    raw = {"seed": 1, "corpus": {"name": "tinyshakespeare", "max_train_chars": 30_000},
           "tokenizer": {"vocab_size": 400}, "model": {"size": "nano", "seq_len": 16},
           "train": {"steps": 3, "batch_size": 4, "eval_tokens": 128}}
    a = pretrain(load_pretrain_config(raw), tmp_path / "a")["checkpoints"][-1]
    b = pretrain(load_pretrain_config(raw), tmp_path / "b")["checkpoints"][-1]
    assert (a["train_loss"], a["valid_perplexity"]) == (b["train_loss"], b["valid_perplexity"])


@pytest.mark.parametrize("edit, expect", [
    ({"train": {"batch_size": 4}}, "train: set exactly one of train.steps or train.epochs"),
    ({"train": {"steps": 2}, "model": {"size": "huge"}}, "model.size: unknown preset 'huge'"),
    ({"train": {"steps": 2}, "corpus": {"name": "nope"}}, "corpus.name: unknown corpus 'nope'"),
])
def test_bad_pretrain_config_is_one_line_exit_2(tmp_path, monkeypatch, capsys, edit, expect):
    import yaml

    raw = {"corpus": {"name": "tinyshakespeare"}, **edit}
    path = tmp_path / "pre.yaml"
    path.write_text(yaml.safe_dump(raw))
    code, out, err = cli(monkeypatch, capsys, "pretrain", path, "--out", tmp_path / "out")
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert expect in err
