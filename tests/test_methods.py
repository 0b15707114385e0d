"""Mechanism tests, one or more per method, against numbers worked out by hand from the papers' formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from methods_helpers import batch_of, feature_setup, make_method, set_head
from scipy import stats

from forgetlab.methods.components.memory import Memory


def softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


# -- EWC -----------------------------------------------------------------------------------------
def two_parameter_ewc(**keys):
    """Logits [w0 x, w1 x]: a head of 2 classes on a 1-d feature, no bias: 2 parameters."""
    xs, ys = [1.0, 2.0], [0, 1]
    stream, learner, ctx = feature_setup([([0, 1], torch.tensor([[x] for x in xs]), ys)])
    learner.begin_task(stream.tasks[0])
    set_head(learner, 0, [[0.5], [-0.3]])
    return stream, learner, make_method("ewc", learner, ctx, **keys), xs, ys


def test_ewc_empirical_fisher_penalty_and_gradient_match_the_formula():
    stream, learner, ewc, xs, ys = two_parameter_ewc(lam=10.0, fisher="empirical")
    w = [0.5, -0.3]
    ewc.after_task(stream.tasks[0])
    # d log p_y / d w_c = x (1[c = y] - p_c);  F_c = mean over examples of its square
    fisher = [0.0, 0.0]
    for x, y in zip(xs, ys):
        p = softmax([w[0] * x, w[1] * x])
        for c in range(2):
            fisher[c] += (x * ((c == y) - p[c])) ** 2 / len(xs)
    importance, anchor = ewc.consolidated.importance, ewc.consolidated.center
    assert importance["head.weights.0"].flatten().tolist() == pytest.approx(fisher, rel=1e-5)
    assert anchor["head.weights.0"].flatten().tolist() == pytest.approx(w)

    set_head(learner, 0, [[0.7], [-0.1]])
    penalty = ewc.penalty({}, None)
    expected = 10.0 / 2 * (fisher[0] * 0.2 ** 2 + fisher[1] * 0.2 ** 2)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    assert not penalty.requires_grad                     # no autograd graph: the gradient is added after backward
    ewc.after_backward()
    grad = learner.head.weights[0].grad.flatten().tolist()
    assert grad == pytest.approx([10.0 * fisher[0] * 0.2, 10.0 * fisher[1] * 0.2], rel=1e-5)


def test_ewc_true_fisher_is_x2_p0_p1_in_expectation():
    # E_{y~p}[(x (1[c=y] - p_c))^2] = x^2 p0 p1 for both classes of a 2-class softmax
    x, n = 1.5, 3000
    stream, learner, ctx = feature_setup([([0, 1], torch.full((n, 1), x), [0] * n)])
    learner.begin_task(stream.tasks[0])
    set_head(learner, 0, [[0.4], [-0.2]])
    ewc = make_method("ewc", learner, ctx, fisher="true")
    torch.manual_seed(0)
    ewc.after_task(stream.tasks[0])
    p0, p1 = softmax([0.4 * x, -0.2 * x])
    fisher = ewc.consolidated.importance["head.weights.0"].flatten()
    assert fisher.tolist() == pytest.approx([x * x * p0 * p1] * 2, rel=0.05)


def test_ewc_keeps_one_term_per_task_and_online_ewc_one_running_fisher():
    xs = torch.tensor([[1.0], [2.0]])
    tasks = [([0, 1], xs, [0, 1]), ([0, 1], xs, [1, 0])]
    for online in (False, True):
        stream, learner, ctx = feature_setup(tasks, scenario="domain_incremental")
        ewc = make_method("ewc", learner, ctx, fisher="empirical", online=online, gamma=0.5)
        learner.begin_task(stream.tasks[0])
        set_head(learner, 0, [[0.5], [-0.3]])
        ewc.after_task(stream.tasks[0])
        f1 = ewc.consolidated.importance["head.weights.0"].clone()
        learner.begin_task(stream.tasks[1])
        set_head(learner, 0, [[0.1], [0.2]])
        ewc.after_task(stream.tasks[1])
        assert ewc.consolidated.tasks == 2
        if not online:
            continue
        # a fresh estimate of task 2's Fisher at the new parameters
        _, learner2, ctx2 = feature_setup([tasks[1]], scenario="domain_incremental")
        learner2.begin_task(ctx2.stream.tasks[0])
        set_head(learner2, 0, [[0.1], [0.2]])
        single = make_method("ewc", learner2, ctx2, fisher="empirical")
        single.after_task(ctx2.stream.tasks[0])
        f2 = single.consolidated.importance["head.weights.0"]
        importance, anchor = ewc.consolidated.importance, ewc.consolidated.center
        assert torch.allclose(importance["head.weights.0"], 0.5 * f1 + f2)      # F <- gamma F + F_t
        assert anchor["head.weights.0"].flatten().tolist() == pytest.approx([0.1, 0.2])


def test_penalty_over_three_tasks_equals_the_sum_of_its_terms_in_two_copies():
    from forgetlab.methods.components.penalty import QuadraticPenalty

    theta = torch.nn.Parameter(torch.zeros(3))
    terms = [([1.0, 0.0, 2.0], [0.5, 9.0, -1.0]), ([3.0, 0.0, 0.5], [1.5, 4.0, 2.0]), ([0.0, 0.0, 1.0], [7.0, 1.0, 0.0])]
    penalty = QuadraticPenalty()
    for omega, anchor in terms:
        theta.data = torch.tensor(anchor)
        penalty.add({"w": torch.tensor(omega)}, {"w": theta})
    theta.data = torch.tensor([1.0, 2.0, 3.0])
    value = penalty.value({"w": theta})
    penalty.add_gradient({"w": theta}, scale=1.0)
    # by hand: sum_t omega_t (theta - anchor_t)^2 and its gradient 2 sum_t omega_t (theta - anchor_t)
    by_hand = sum(o * (t - a) ** 2 for omega, anchor in terms for o, a, t in zip(omega, anchor, [1.0, 2.0, 3.0]))
    grad = [sum(2 * omega[i] * ([1.0, 2.0, 3.0][i] - anchor[i]) for omega, anchor in terms) for i in range(3)]
    assert by_hand == 0.25 + 32.0 + 0.75 + 0.5 + 9.0     # 42.5
    assert value.item() == pytest.approx(42.5, rel=1e-6)
    assert theta.grad.tolist() == pytest.approx(grad, rel=1e-6)
    assert penalty.tasks == 3 and len(penalty.state()) == 3          # importance, centre, meta: not one pair per task
    restored = QuadraticPenalty()
    restored.load_state(penalty.state())
    assert restored.value({"w": theta}).item() == pytest.approx(42.5, rel=1e-6)


# -- MAS -----------------------------------------------------------------------------------------
def test_mas_importance_on_a_linear_model_is_mean_abs_gradient_of_squared_norm():
    # f(x) = W x; d ||W x||^2 / d W_ij = 2 (W x)_i x_j
    X = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 1.0]])
    W = torch.tensor([[0.3, -0.1], [0.2, 0.4]])
    stream, learner, ctx = feature_setup([([0, 1], X, [0, 1, 0])])
    learner.begin_task(stream.tasks[0])
    set_head(learner, 0, W.tolist())
    mas = make_method("mas", learner, ctx, lam=3.0)
    mas.after_task(stream.tasks[0])
    expected = np.mean([np.abs(2 * np.outer(W.numpy() @ x, x)) for x in X.numpy()], axis=0)
    omega = mas.consolidated.importance
    assert np.allclose(omega["head.weights.0"].numpy(), expected, rtol=1e-5)
    set_head(learner, 0, (W + 0.1).tolist())
    assert mas.penalty({}, None).item() == pytest.approx(3.0 * expected.sum() * 0.01, rel=1e-5)
    mas.after_backward()                                       # d/dW of lam * Omega (W - W*)^2 = 2 lam Omega 0.1
    assert np.allclose(learner.head.weights[0].grad.numpy(), 2 * 3.0 * expected * 0.1, rtol=1e-5)
    mas.after_task(stream.tasks[0])                            # importances add up across tasks
    omega2 = mas.consolidated.importance["head.weights.0"].numpy()
    expected2 = np.mean([np.abs(2 * np.outer((W.numpy() + 0.1) @ x, x)) for x in X.numpy()], axis=0)
    assert np.allclose(omega2, expected + expected2, rtol=1e-5)


# -- LwF -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scenario", ["class_incremental", "task_incremental"])
def test_lwf_loss_is_kl_of_old_outputs_at_temperature_T(scenario):
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(3, 3, generator=g) for _ in range(3)]
    stream, learner, ctx = feature_setup([([0, 1], feats[0], [0, 1, 0]), ([2, 3], feats[1], [2, 3, 2]),
                                          ([4, 5], feats[2], [4, 5, 4])], scenario=scenario, bias=True)
    lwf = make_method("lwf", learner, ctx, lam=0.7, temperature=2.0)
    for t in range(2):
        learner.begin_task(stream.tasks[t])
    task = stream.tasks[2]
    learner.begin_task(task)
    lwf.before_task(task)
    old_w = learner.head.weight().detach().clone()
    old_b = torch.cat(list(learner.head.biases)).detach().clone()
    with torch.no_grad():                                   # the student drifts away from the teacher
        for p in learner.head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    batch = batch_of(ctx, task)
    out = learner(batch)
    new_w, new_b = learner.head.weight().detach(), torch.cat(list(learner.head.biases)).detach()
    groups = [[0, 1], [2, 3]] if scenario == "task_incremental" else [[0, 1, 2, 3]]
    expected = 0.0
    for x in feats[2]:
        for cols in groups:
            t = softmax(((old_w @ x + old_b)[cols] / 2.0).tolist())
            s = softmax(((new_w @ x + new_b)[cols] / 2.0).tolist())
            expected += sum(ti * (math.log(ti) - math.log(si)) for ti, si in zip(t, s)) / 3
    assert lwf.penalty(batch, out).item() == pytest.approx(0.7 * expected, rel=1e-5)


# -- the replay memory ---------------------------------------------------------------------------
def test_reservoir_keeps_each_of_n_items_with_probability_size_over_n():
    torch.manual_seed(0)
    n, size, trials = 20, 5, 2000
    kept = np.zeros(n)
    for _ in range(trials):
        memory = Memory(size, "reservoir")
        for first in (0, 10):                               # two tasks' worth of offers
            ids = torch.arange(first, first + 10)
            memory.add(torch.zeros(10, dtype=torch.long), ids, ids % 3)
        assert len(memory) == size and len(set(memory.example_ids.tolist())) == size
        kept[memory.example_ids.numpy()] += 1
    expected = trials * size / n
    assert stats.chisquare(kept, np.full(n, expected)).pvalue > 0.01
    assert np.abs(kept / trials - size / n).max() < 0.05


def test_class_balanced_memory_stays_balanced():
    torch.manual_seed(0)
    memory = Memory(12, "class_balanced")

    def offer(label, count):
        memory.add(torch.zeros(count, dtype=torch.long), torch.arange(count), torch.full((count,), label))

    def counts():
        return dict(sorted(zip(*np.unique(memory.labels.numpy(), return_counts=True))))

    offer(0, 30), offer(1, 30)
    assert counts() == {0: 6, 1: 6}
    offer(2, 30), offer(3, 30)
    assert counts() == {0: 3, 1: 3, 2: 3, 3: 3}
    offer(4, 1)                                             # 12 = 5 * 2 + 2: the first two classes keep 3
    assert counts() == {0: 3, 1: 3, 2: 2, 3: 2, 4: 1}
    offer(4, 5)
    assert counts() == {0: 3, 1: 3, 2: 2, 3: 2, 4: 2}


def test_replay_mixes_a_memory_batch_into_every_step_and_composes_with_other_methods():
    g = torch.Generator().manual_seed(1)
    feats = [torch.randn(4, 2, generator=g) for _ in range(2)]
    stream, learner, ctx = feature_setup([([0, 1], feats[0], [0, 1, 0, 1]), ([2, 3], feats[1], [2, 3, 2, 3])],
                                         batch_size=8)
    for name, keys in (("replay", {}), ("ewc", {"fisher": "empirical"})):
        method = make_method(name, learner, ctx, replay={"size": 4}, **keys)
        learner.begin_task(stream.tasks[0])
        method.after_task(stream.tasks[0])
        assert sorted(method.memory.example_ids.tolist()) == [0, 1, 2, 3]
        learner.begin_task(stream.tasks[1])
        batch = batch_of(ctx, stream.tasks[1], [0, 1])
        out = learner(batch)
        logits = torch.cat([out.logits, learner(batch_of(ctx, stream.tasks[0])).logits])
        labels = torch.tensor([2, 3, 0, 1, 0, 1])
        expected = F.cross_entropy(logits, labels) + method.penalty(batch, out)
        assert method.loss(batch, out).item() == pytest.approx(expected.item(), rel=1e-6)


def test_der_plus_plus_stores_logits_and_replays_them():
    g = torch.Generator().manual_seed(2)
    feats = torch.randn(4, 3, generator=g)
    stream, learner, ctx = feature_setup([([0, 1], feats, [0, 1, 1, 0]), ([2, 3], feats, [2, 3, 3, 2])], bias=True)
    der = make_method("der++", learner, ctx, alpha=0.3, beta=0.6, replay={"size": 4, "batch_size": 4})
    task = stream.tasks[0]
    learner.begin_task(task)
    batch = batch_of(ctx, task)
    out = learner(batch)
    assert der.loss(batch, out).item() == pytest.approx(F.cross_entropy(out.logits, batch["labels"]).item())
    stored = learner.head(feats).detach()                        # every class's output, unmasked
    order = der.memory.example_ids.argsort()
    assert torch.equal(der.memory.payload[order], stored)
    with torch.no_grad():
        learner.head.weights[0].mul_(-1.0)                       # the model moves on
    learner.begin_task(stream.tasks[1])
    batch2 = batch_of(ctx, stream.tasks[1])
    out2 = learner(batch2)
    now = learner.head(feats)
    mem_logits = learner(batch_of(ctx, task)).logits
    expected = (F.cross_entropy(out2.logits, batch2["labels"]) + 0.3 * F.mse_loss(now, stored)
                + 0.6 * F.cross_entropy(mem_logits, torch.tensor([0, 1, 1, 0])))
    assert der.loss(batch2, out2).item() == pytest.approx(expected.item(), rel=1e-5)


# -- k-NN memory ---------------------------------------------------------------------------------
def test_knn_memory_returns_the_exact_nearest_neighbours_and_votes():
    g = torch.Generator().manual_seed(3)
    train = torch.randn(30, 4, generator=g)
    labels = [i % 3 for i in range(30)]
    stream, learner, ctx = feature_setup([([0, 1, 2], train, labels)])
    knn = make_method("knn_memory", learner, ctx, k=5)
    learner.begin_task(stream.tasks[0])
    knn.after_task(stream.tasks[0])
    queries = torch.randn(7, 4, generator=g)
    got = knn.neighbours(queries, torch.ones(7, 3, dtype=torch.bool))
    a = train.numpy() / np.linalg.norm(train.numpy(), axis=1, keepdims=True)
    q = queries.numpy() / np.linalg.norm(queries.numpy(), axis=1, keepdims=True)
    brute = np.argsort(-(q @ a.T), axis=1)[:, :5]
    assert [sorted(r) for r in got.tolist()] == [sorted(r) for r in brute.tolist()]
    learner.eval()
    pred = learner.logits(queries, torch.zeros(7, dtype=torch.long)).argmax(-1)
    votes = [np.bincount(np.array(labels)[r], minlength=3) for r in brute]
    assert pred.tolist() == [int(np.argmax(v)) for v in votes]   # ties: the smallest class id


def test_knn_memory_searches_only_the_tasks_classes_when_the_task_id_is_known():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    stream, learner, ctx = feature_setup([([0, 1], train[:2], [0, 1]), ([2, 3], train[2:], [2, 3])],
                                         scenario="task_incremental")
    knn = make_method("knn_memory", learner, ctx, k=1)
    for t in stream.tasks:
        learner.begin_task(t)
        knn.after_task(t)
    learner.eval()
    query = torch.tensor([[1.0, 0.05]])                      # nearest overall: example 0 (class 0)
    assert learner.logits(query, torch.tensor([0])).argmax().item() == 0
    assert learner.logits(query, torch.tensor([1])).argmax().item() == 3   # within task 1: class 3 is nearer
