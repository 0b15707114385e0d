"""Stream splits: disjoint classes, seeded orders, caps, scenarios, sequences."""
import pytest
from conftest import needs_data

from forgetlab.kinds.classification import ClassificationData
from forgetlab.data.stream import build_stream
from forgetlab.errors import UserError


def clinc(**kw) -> ClassificationData:
    return ClassificationData(name="clinc150", **kw)


@needs_data("clinc150")
def test_clinc150_is_15_tasks_of_10_disjoint_classes():
    s = build_stream(clinc(classes_per_task=10))
    assert len(s.tasks) == 15 and s.num_classes == 150
    seen = set()
    for t in s.tasks:
        assert len(t.classes) == 10
        assert not seen & set(t.classes)             # no class in two tasks
        seen |= set(t.classes)
        assert set(t.train_labels) == set(t.classes) == set(t.test_labels)
        assert len(t.train_texts) == 1000 and len(t.test_texts) == 300
    assert seen == set(range(150))


def test_class_order_is_reproducible_from_the_seed_and_changes_with_it():
    names = lambda seed: [build_stream(clinc(classes_per_task=10, order_seed=seed)).class_names]
    assert names(0) == names(0)
    assert names(0) != names(1)


def test_order_seed_none_keeps_sorted_labels():
    s = build_stream(clinc(classes_per_task=10, order_seed=None))
    assert s.class_names == sorted(s.class_names)


def test_explicit_class_order():
    s = build_stream(clinc(classes_per_task=2, order=["alarm", "apr", "bill_due", "calories"]))
    assert s.class_names == ["alarm", "apr", "bill_due", "calories"]
    assert [t.classes for t in s.tasks] == [[0, 1], [2, 3]]


def test_per_class_cap_and_max_tasks():
    s = build_stream(clinc(classes_per_task=10, max_train_per_class=7, max_test_per_class=3, max_tasks=2))
    assert len(s.tasks) == 2
    for t in s.tasks:
        assert sorted(t.train_labels.count(c) for c in t.classes) == [7] * 10
        assert len(t.test_labels) == 30


def test_cap_sample_depends_on_seed_only():
    a = build_stream(clinc(classes_per_task=10, max_train_per_class=5, max_tasks=1), seed=0).tasks[0].train_texts
    b = build_stream(clinc(classes_per_task=10, max_train_per_class=5, max_tasks=1), seed=0).tasks[0].train_texts
    c = build_stream(clinc(classes_per_task=10, max_train_per_class=5, max_tasks=1), seed=1).tasks[0].train_texts
    assert a == b and a != c


@needs_data("clinc150")
def test_inexact_division_is_an_error_unless_allowed():
    with pytest.raises(UserError, match="data.classes_per_task"):
        build_stream(clinc(classes_per_task=7))
    s = build_stream(clinc(classes_per_task=7, exact_division=False))
    assert [len(t.classes) for t in s.tasks] == [7] * 21 + [3]


@needs_data("clinc150")
def test_domain_incremental_by_field_shares_one_label_space():
    s = build_stream(clinc(scenario="domain_incremental", task_field="domain", order_seed=None))
    assert len(s.tasks) == 10                       # CLINC150's 10 domains
    assert all(t.classes == list(range(150)) for t in s.tasks)
    assert sum(len(t.train_texts) for t in s.tasks) == 15000


def test_five_dataset_sequence_namespaces_labels_per_data_set():
    cfg = ClassificationData(sequence=["agnews", "yelp", "amazon", "dbpedia", "yahoo"], order_seed=None,
                     max_train_per_class=2, max_test_per_class=2)
    s = build_stream(cfg)
    assert [t.name for t in s.tasks] == ["agnews", "yelp", "amazon", "dbpedia", "yahoo"]
    assert [len(t.classes) for t in s.tasks] == [4, 5, 5, 14, 10]
    assert s.class_names[0].startswith("agnews:") and s.class_names[4].startswith("yelp:")


def test_sequence_order_is_seeded():
    cfg = lambda seed: ClassificationData(sequence=["agnews", "yelp", "amazon"], order_seed=seed, max_train_per_class=1,
                                  max_test_per_class=1)
    orders = {tuple(t.name for t in build_stream(cfg(seed)).tasks) for seed in range(6)}
    assert len(orders) > 1
    assert [t.name for t in build_stream(cfg(3)).tasks] == [t.name for t in build_stream(cfg(3)).tasks]


def test_domain_incremental_sequence_shares_yelp_and_amazon_labels():
    cfg = ClassificationData(sequence=["yelp", "amazon"], scenario="domain_incremental", order_seed=None,
                     max_train_per_class=2, max_test_per_class=2)
    s = build_stream(cfg)
    assert s.num_classes == 5 and s.tasks[0].classes == s.tasks[1].classes


def test_unknown_builtin_name():
    with pytest.raises(UserError, match="unknown data set"):
        build_stream(ClassificationData(name="clinc151", classes_per_task=10))
