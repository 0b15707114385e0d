"""Data transforms (redundancy, sparsity, few-shot, long tail), task order, and per-class forgetting.

The toy data set has 8 classes c0..c7 with 20 training and 5 test examples each; 4 classes per task,
so 2 tasks of 80 training examples. Every expected number below is worked out by hand.
"""
import base64
import json
import random
import re
from collections import Counter

import numpy as np
import pytest

import forgetlab
from forgetlab.kinds.classification import ClassificationData
from forgetlab.experiment import load_config
from forgetlab.data.sources import Example
from forgetlab.data.stream import build_stream
from forgetlab.data.transforms import duplicate, zipf_ranks, zipf_sizes
from forgetlab.errors import UserError
from forgetlab.eval.per_class import class_accuracy, per_class_forgetting
from forgetlab.report import write_report
from conftest import tiny_config

LABELS = [f"c{k}" for k in range(8)]


@pytest.fixture
def toy(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    for split, n in (("train", 20), ("test", 5)):
        lines = [json.dumps({"text": f"{label} {split} {i}", "label": label}) for label in LABELS for i in range(n)]
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def stream(toy, transform=None, seed=0, **kw):
    cfg = {"path": str(toy), "classes_per_task": 4, "order_seed": None, **kw}
    return build_stream(ClassificationData(**cfg, transform=transform), seed)


def per_class(task) -> dict[int, int]:
    return dict(Counter(task.train_labels))


# -- redundancy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction, extra", [(0.25, 20), (0.3, 24), (0.0, 0)])
def test_redundancy_adds_round_f_n_exact_copies(toy, fraction, extra):
    for task in stream(toy, {"redundancy": fraction}).tasks:
        assert len(task.train_texts) == 80 + extra
        counts = Counter(zip(task.train_texts, task.train_labels))
        assert sorted(counts.values()) == [1] * (80 - extra) + [2] * extra     # exactly `extra` twice, none more
        labels = LABELS[4 * task.index: 4 * task.index + 4]
        assert task.train_texts[:80] == [f"{label} train {i}" for label in labels for i in range(20)]   # originals first


def test_redundancy_rounds_half_up():
    rows = [Example(f"t{i}", "a") for i in range(5)]
    out = duplicate(rows, 0.5, random.Random(0))          # 0.5 · 5 = 2.5 -> 3 copies
    assert len(out) == 8 and out[:5] == rows
    assert sorted(Counter(e.text for e in out).values()) == [1, 1, 2, 2, 2]


# -- sparsity and few-shot ----------------------------------------------------------------------
@pytest.mark.parametrize("transform, per_class_n", [
    ({"keep": 0.33}, 7),             # 0.33 · 20 = 6.6 -> 7
    ({"keep": 0.5}, 10),
    ({"keep": 0.01}, 1),             # 0.2 -> 0, but at least 1
    ({"shots": 5}, 5),
    ({"shots": 50}, 20),             # fewer than 50: all of them
])
def test_keep_and_shots_per_class(toy, transform, per_class_n):
    s = stream(toy, transform)
    for task in s.tasks:
        assert per_class(task) == {c: per_class_n for c in task.classes}
        assert len(set(task.train_texts)) == len(task.train_texts)            # sampled without repeats


# -- long tail ----------------------------------------------------------------------------------
@pytest.mark.parametrize("exponent, sizes", [
    (1.0, [20, 10, 7, 5]),           # 20/1, 20/2, 20/3 = 6.67 -> 7, 20/4
    (2.0, [20, 5, 2, 1]),            # 20/1, 20/4, 20/9 = 2.22 -> 2, 20/16 = 1.25 -> 1
    (0.0, [20, 20, 20, 20]),
])
def test_zipf_sizes_per_rank(toy, exponent, sizes):
    s = stream(toy, {"zipf": exponent, "seed": 3})
    for task in s.tasks:
        names = [s.class_names[c] for c in task.classes]
        counts = {s.class_names[c]: n for c, n in per_class(task).items()}
        assert [counts[label] for label in zipf_ranks(names, 3)] == sizes


def test_zipf_scales_from_the_smallest_class():
    sizes = zipf_sizes({"a": 30, "b": 12, "c": 25}, 1.0, seed=0)       # m = 12: 12, 6, 4
    assert [sizes[label] for label in zipf_ranks(["a", "b", "c"], 0)] == [12, 6, 4]


def test_zipf_rank_order_is_seeded():
    assert zipf_ranks(LABELS, 0) == zipf_ranks(list(reversed(LABELS)), 0)   # depends on the labels, not their order
    assert len({tuple(zipf_ranks(LABELS, seed)) for seed in range(4)}) > 1


def test_transforms_apply_shots_then_zipf_then_redundancy(toy):
    # shots 10 -> 10 each; zipf m = 10: 10, 5, 3.33 -> 3, 2.5 -> 3 (21 in all); redundancy round(0.5 · 21) = 11
    s = stream(toy, {"shots": 10, "zipf": 1.0, "redundancy": 0.5})
    for task in s.tasks:
        assert len(task.train_texts) == 32
        unique = dict(Counter(task.train_labels[:21]))
        assert sorted(unique.values(), reverse=True) == [10, 5, 3, 3]
        assert sum(n == 2 for n in Counter(task.train_texts).values()) == 11


# -- test sets, seeds, order --------------------------------------------------------------------
@pytest.mark.parametrize("transform", [{"redundancy": 0.4}, {"keep": 0.2}, {"shots": 2}, {"zipf": 1.5},
                                       {"shots": 3, "zipf": 1.0, "redundancy": 0.9, "seed": 7}])
def test_test_sets_are_untouched(toy, transform):
    plain, changed = stream(toy, max_test_per_class=3), stream(toy, transform, max_test_per_class=3)
    assert changed.class_names == plain.class_names
    for a, b in zip(plain.tasks, changed.tasks):
        assert (a.test_texts, a.test_labels) == (b.test_texts, b.test_labels)
        assert a.classes == b.classes


def test_same_seed_same_examples_other_seed_other_choice(toy):
    texts = lambda seed: [t.train_texts for t in stream(toy, {"keep": 0.5, "redundancy": 0.2, "seed": seed}).tasks]
    assert texts(0) == texts(0)
    assert texts(0) != texts(1)
    assert stream(toy, {"keep": 0.5}).tasks == stream(toy, {"keep": 0.5}, seed=5).tasks    # the run seed plays no part


def test_fixed_and_permuted_task_order(toy):
    order = ["c5", "c2", "c7", "c0", "c1", "c6", "c3", "c4"]
    fixed = stream(toy, {"shots": 2}, order=order)
    assert fixed.class_names == order
    assert [[fixed.class_names[c] for c in t.classes] for t in fixed.tasks] == [order[:4], order[4:]]
    assert [{fixed.class_names[c] for c in t.test_labels} for t in fixed.tasks] == [set(order[:4]), set(order[4:])]

    expected = sorted(LABELS)
    random.Random(3).shuffle(expected)
    permuted = stream(toy, {"shots": 2}, order_seed=3)
    assert permuted.class_names == expected != sorted(LABELS)
    assert stream(toy).class_names == sorted(LABELS)                     # order_seed null: file (sorted) order


# -- config errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("transform, message", [
    ({"zipff": 1.0}, "data.transform.zipff: unknown key (did you mean 'zipf'?)"),
    ({"redundancy": 1.0}, "data.transform.redundancy: Input should be less than 1"),
    ({"keep": 0}, "data.transform.keep: Input should be greater than 0"),
    ({"shots": 0}, "data.transform.shots: Input should be greater than or equal to 1"),
    ({"keep": 0.5, "shots": 3}, "data.transform: set at most one of data.transform.keep or data.transform.shots"),
])
def test_bad_transform_is_a_clear_config_error(transform, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_config(tiny_config(data={"transform": transform}))


# -- per-class accuracy and forgetting ----------------------------------------------------------
def test_class_accuracy():
    assert class_accuracy([0, 1, 1, 2, 2, 2], [0, 0, 1, 2, 2, 1], 4) == [0.5, 0.5, 1.0, None]


def test_per_class_forgetting_by_hand():
    A = [[0.9, None, None, None],
         [0.5, 0.8, 0.2, None],
         [0.3, 0.6, 0.5, 1.0]]
    # c0: max(0.9, 0.5) - 0.3; c1: 0.8 - 0.6; c2: 0.2 - 0.5 (it improved); c3: first seen last: None
    assert per_class_forgetting(A) == [pytest.approx(0.6), pytest.approx(0.2), pytest.approx(-0.3), None]
    assert per_class_forgetting([[0.5, None]]) == [None, None]
    with pytest.raises(ValueError):
        per_class_forgetting([])


def _report_images(results, tmp_path):
    page = write_report(results, tmp_path / "report.html").read_text(encoding="utf-8")
    return len(re.findall(r'src="data:image/png;base64,', page)), page


def test_report_shows_class_forgetting_only_when_frequencies_differ(tmp_path):
    results = {"tasks": ["task0", "task1"], "accuracy_matrix": [[0.9, 0.0], [0.4, 0.8]],
               "config": {"data": {"transform": None}}, "class_train_counts": [10, 10, 10, 10],
               "per_class_accuracy": [[0.9, 0.9, None, None], [0.5, 0.3, 0.8, 0.8]]}
    plain, _ = _report_images(results, tmp_path)
    results["class_train_counts"] = [10, 5, 10, 3]
    n, page = _report_images(results, tmp_path)
    assert n == plain + 1 and "forgetting against its number of training examples" in page
    results["class_train_counts"] = [10, 10, 10, 10]
    results["config"]["data"]["transform"] = {"zipf": 0.0}
    assert _report_images(results, tmp_path)[0] == plain + 1


def test_run_records_per_class_accuracy_and_counts(tmp_path):
    # CLINC150, 3 tasks of 5 classes, 8 training examples each; zipf 1: 8, 4, 2.67 -> 3, 2, 1.6 -> 2
    res = forgetlab.run(tiny_config(data={"transform": {"zipf": 1.0}}), out=tmp_path / "run")
    raw = json.loads((tmp_path / "run" / "results.json").read_text())
    counts = raw["class_train_counts"]
    assert [sorted(counts[5 * t: 5 * t + 5], reverse=True) for t in range(3)] == [[8, 4, 3, 2, 2]] * 3
    assert len(raw["class_names"]) == 15
    A = raw["per_class_accuracy"]
    assert [[v is None for v in row] for row in A] == [[c >= 5 * (i + 1) for c in range(15)] for i in range(3)]
    R = res.accuracy_matrix            # 4 test examples per class: a task's accuracy is its classes' mean
    for i in range(3):
        for j in range(i + 1):
            assert R[i, j] == pytest.approx(np.mean(A[i][5 * j: 5 * j + 5]))
    page = (tmp_path / "run" / "report.html").read_text()
    assert "forgetting against its number of training examples" in page
    assert all(base64.b64decode(m) for m in re.findall(r'base64,([A-Za-z0-9+/=]+)"', page))
