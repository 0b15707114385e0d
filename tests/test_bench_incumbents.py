"""Benchmark 5 (forgetlab against a transformers.Trainer baseline) on a tiny random BERT: the baseline
takes exactly the optimizer steps forgetlab takes, never predicts an unseen class, and its EWC and
replay pieces do what they claim."""
import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import AutoTokenizer, BertConfig, BertModel, DataCollatorWithPadding

from forgetlab.bench import incumbents
from forgetlab.experiment import load_config
from forgetlab.data.stream import build_stream
from forgetlab.methods.ewc import EWCConfig
from forgetlab.models.backbones import resolve_model_path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model gains nothing from two threads, and on a busy machine they wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A one-layer random BERT with MiniLM's tokenizer, saved like a hub model."""
    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(incumbents.MINILM))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def tiny_config(path: str, method: str = "seq") -> dict:
    config = incumbents.setting(quick=True)
    config["backbone"] = {**config["backbone"], "name": path}
    config["data"].update({"classes_per_task": 3, "max_tasks": 2, "max_train_per_class": 5, "max_test_per_class": 4})
    config["train"].update({"batch_size": 4})
    config["method"] = incumbents.method_config(method)
    return config


def test_trainer_takes_exactly_the_requested_optimizer_steps(tiny_bert, tmp_path):
    cfg = load_config(tiny_config(tiny_bert))
    expected = math.ceil(15 / 4)                           # 3 classes x 5 examples, batches of 4, one epoch
    assert [incumbents.steps_per_task(cfg, t) for t in build_stream(cfg.data, cfg.seed).tasks] == [expected] * 2
    counted = []
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: counted.append(opt))
    try:
        R, steps = incumbents.run_trainer(cfg, "seq", str(tmp_path))
    finally:
        hook.remove()
    assert steps == [expected, expected]
    assert len(counted) == 2 * expected                     # AdamW steps actually taken
    assert len({id(opt) for opt in counted}) == 2           # a fresh optimizer per task, as forgetlab
    assert np.array(R).shape == (2, 2) and R[0][1] == 0.0


def test_unseen_classes_are_never_predicted(tiny_bert):
    model = incumbents.Classifier(tiny_bert, num_classes=6).eval()
    model.seen[:3] = True
    with torch.no_grad():
        model.head.bias[5] = 1e4                            # the unseen class 5 would win every time
        ids = torch.randint(1000, 2000, (8, 7))
        logits = model(ids, torch.ones_like(ids))["logits"]
    assert torch.isinf(logits[:, 3:]).all() and torch.isfinite(logits[:, :3]).all()
    assert (logits.argmax(-1) < 3).all()


def test_fisher_is_zero_on_unseen_rows_and_the_penalty_vanishes_at_the_anchor(tiny_bert):
    # the baseline implements forgetlab's EWC defaults: true Fisher, on every example, one term per task
    defaults = EWCConfig(name="ewc")
    assert (defaults.fisher, defaults.fisher_examples, defaults.online) == ("true", None, False)
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    model = incumbents.Classifier(tiny_bert, num_classes=6)
    model.seen[:3] = True
    examples = incumbents.tokenized(tokenizer, ["book a flight", "what time is it", "play some jazz"], [0, 1, 2], 32)
    fisher, anchor = incumbents.fisher_term(model, examples, DataCollatorWithPadding(tokenizer))
    assert (fisher["head.weight"][3:] == 0).all() and fisher["head.weight"][:3].sum() > 0
    assert all((f >= 0).all() for f in fisher.values())
    assert incumbents.ewc_penalty(model, [(fisher, anchor)]).item() == 0.0
    with torch.no_grad():
        model.head.bias += 1.0
    assert incumbents.ewc_penalty(model, [(fisher, anchor)]).item() == pytest.approx(fisher["head.bias"].sum().item())


def test_reservoir_keeps_a_fixed_size_sample():
    torch.manual_seed(0)
    memory, offered = [], 0
    for start in (0, 12):
        offered = incumbents.reservoir_add(memory, offered, [{"labels": i} for i in range(start, start + 12)], 5)
    assert len(memory) == 5 and offered == 24
    assert len({m["labels"] for m in memory}) == 5


@pytest.mark.parametrize("method", incumbents.METHODS)
def test_compare_gives_a_complete_row(tiny_bert, method):
    row = incumbents.compare(tiny_config(tiny_bert, method), rounds=1)
    assert row["method"] == method and row["steps_per_task"] == 4
    assert row["forgetlab_s"] > 0 and row["trainer_s"] > 0
    assert row["speedup"] == pytest.approx(row["trainer_s"] / row["forgetlab_s"])
    for side in ("forgetlab", "trainer"):
        R = np.array(row[f"{side}_R"])
        assert R.shape == (2, 2) and ((R >= 0) & (R <= 1)).all() and R[0, 1] == 0.0
        assert 0 <= row[f"{side}_acc"] <= 1 and row[f"{side}_acc"] == pytest.approx(R[-1].mean())


def test_avalanche_side_cuts_each_batch_to_its_longest_text(tiny_bert):
    # Avalanche stacks fixed-length tensors; PackedInputs hands the classifier ids and mask of the
    # batch's longest text, so the logits equal those of the unpadded batch
    from forgetlab.bench.avalanche_side import PackedInputs

    model = incumbents.Classifier(tiny_bert, num_classes=4).eval()
    model.seen[:] = True
    ids = torch.randint(1000, 2000, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = torch.zeros(2, 2, 8, dtype=torch.long)
    padded[:, 0, :5], padded[:, 1, :5] = ids * mask, mask
    seen_widths = []
    hook = model.encoder.register_forward_pre_hook(lambda m, a, kw: seen_widths.append(kw["input_ids"].shape[1]),
                                                   with_kwargs=True)
    with torch.no_grad():
        packed = PackedInputs(model)(padded)
        direct = model(ids * mask, mask)["logits"]
    hook.remove()
    assert seen_widths == [5, 5]
    torch.testing.assert_close(packed, direct)
