"""Batched per-example gradient statistics against one backward pass per example."""
import pytest
import torch

from forgetlab.config import BackboneConfig, HeadConfig
from forgetlab.data.stream import Stream, Task
from forgetlab.methods.components.importance import _batched_path_agrees, _loop_statistic, mean_statistic
from forgetlab.methods.components.per_example import Unsupported, batched_statistic
from forgetlab.models.backbones import build_backbone
from forgetlab.models.learner import Classifier
from forgetlab.train.batching import Inputs, make_batch

TEXTS = ["a short one", "a rather longer text with more words in it", "mid length text", "x",
         "another text of some length", "the last one here"]


def setup(arch: str, head: str = "linear"):
    torch.manual_seed(0)
    labels = [0, 1, 2, 0, 1, 2]
    stream = Stream("class_incremental", [Task(0, "t0", [0, 1, 2], TEXTS, labels, TEXTS, labels)], ["a", "b", "c"])
    backbone = build_backbone(BackboneConfig(arch=arch, size="tiny", max_length=48))
    learner = Classifier(backbone, HeadConfig(type=head), stream).eval()
    learner.begin_task(stream.tasks[0])
    y = torch.tensor(labels)
    data = Inputs(y, torch.zeros_like(y), torch.arange(len(y)), tokens=backbone.tokenize(TEXTS))
    params = {n: p for n, p in learner.named_parameters() if p.requires_grad}
    return learner, data, params, lambda inputs: make_batch(inputs, torch.arange(len(inputs)), 0, torch.device("cpu"))


def cross_entropy(learner):
    return lambda b: torch.nn.functional.cross_entropy(learner(b).logits, b["labels"], reduction="sum")


@pytest.mark.parametrize("arch,head", [("bert", "linear"), ("gpt2", "linear"), ("bert", "cosine")])
@pytest.mark.parametrize("square", [True, False])
def test_batched_statistic_equals_the_loop(arch, head, square):
    learner, data, params, batch = setup(arch, head)
    objective = cross_entropy(learner)
    singles = [batch(data.subset(torch.tensor([i]))) for i in range(len(data))]
    loop = _loop_statistic(objective, params, singles, square)
    # two padded batches of 3: embeddings, position embeddings (batch 1, broadcast), linear, layer
    # norm, GPT-2's Conv1D and the head all need their per-example gradients recovered
    fast = batched_statistic(learner, objective, params, [batch(data.subset(torch.arange(3))),
                                                          batch(data.subset(torch.arange(3, 6)))], square)
    assert set(fast) == set(loop)
    assert not any(t.requires_grad for t in fast.values())        # no autograd history kept alive
    used = [k for k in loop if loop[k].abs().sum() > 0]
    assert len(used) > 10 and any("embed" in k or "wte" in k for k in used)
    scale = max(t.abs().max().item() for t in loop.values())    # (a key bias's gradient is 0 up to rounding)
    for k in loop:
        assert torch.allclose(fast[k], loop[k], rtol=1e-4, atol=1e-6 * scale), k


def test_a_summed_gradient_is_not_a_per_example_statistic():
    # the squared gradient of the whole batch is not the sum of squares: the check must tell them apart
    learner, data, params, batch = setup("bert")
    objective = cross_entropy(learner)
    singles = [batch(data.subset(torch.tensor([i]))) for i in range(len(data))]
    loop = _loop_statistic(objective, params, singles, square=True)
    summed = _loop_statistic(objective, params, [batch(data)], square=True)
    assert not torch.allclose(summed["head.weights.0"], loop["head.weights.0"], rtol=1e-3)


def test_lstm_falls_back_to_the_loop_and_gives_its_numbers():
    learner, data, params, batch = setup("lstm")
    with pytest.raises(Unsupported):
        batched_statistic(learner, cross_entropy(learner), params, [batch(data)], square=True)
    assert not _batched_path_agrees(learner, params, data, batch)
    objective = cross_entropy(learner)
    mean = mean_statistic(learner, objective, params, data, batch, square=True)
    loop = _loop_statistic(objective, params, [batch(data.subset(torch.tensor([i]))) for i in range(6)], True)
    for k in loop:
        assert torch.allclose(mean[k], loop[k] / 6)


def test_mean_statistic_takes_the_batched_path_on_bert_and_matches():
    learner, data, params, batch = setup("bert")
    assert _batched_path_agrees(learner, params, data, batch)
    objective = cross_entropy(learner)
    mean = mean_statistic(learner, objective, params, data, batch, square=False)
    slow = mean_statistic(learner, objective, params, data, batch, square=False, batched=False)
    for k in slow:
        assert torch.allclose(mean[k], slow[k], rtol=1e-4, atol=1e-7), k
