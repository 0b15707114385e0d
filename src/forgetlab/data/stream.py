"""Streams: a data set (or several) cut into an ordered sequence of tasks.

Global class ids are assigned in stream order (task 0's classes first), so the classes of
task t are a contiguous range and a head can grow by one block per task.
Training sets may then be transformed (``data.transform``, see transforms.py); test sets never are.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from ..config import DataConfig
from ..errors import UserError
from .sources import Dataset, Example, load_dataset
from .transforms import transform


@dataclass
class Task:
    index: int
    name: str
    classes: list[int]              # global class ids, contiguous
    train_texts: list[str]
    train_labels: list[int]
    test_texts: list[str]
    test_labels: list[int]


@dataclass
class Stream:
    scenario: str
    tasks: list[Task]
    class_names: list[str]          # global class id -> label name

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_train_counts(self) -> list[int]:
        """Training examples of each class over all tasks (after any transform)."""
        counts = [0] * self.num_classes
        for task in self.tasks:
            for label in task.train_labels:
                counts[label] += 1
        return counts


def build_stream(cfg: DataConfig, seed: int = 0) -> Stream:
    """Build the tasks the config describes; every user error names the config key."""
    if cfg.sequence:
        groups = _sequence_groups(cfg, seed)
    else:
        ds = load_dataset(cfg.name, cfg.path, seed)
        ds = Dataset(ds.name, _drop(ds.train, cfg.drop_labels), _drop(ds.test, cfg.drop_labels))
        _check_test_labels(ds)
        if cfg.scenario == "domain_incremental":
            groups = _domain_groups(ds, cfg, seed)
        else:
            groups = _class_groups(ds, cfg)
    if cfg.max_tasks:
        groups = groups[: cfg.max_tasks]
    return _assemble(groups, cfg, seed)


# A group is one task before class ids are assigned: (name, ordered label names, train, test).
Group = tuple[str, list[str], list[Example], list[Example]]


def _drop(rows: list[Example], labels: list[str]) -> list[Example]:
    return [ex for ex in rows if ex.label not in labels] if labels else rows


def _check_test_labels(ds: Dataset) -> None:
    train_labels = {ex.label for ex in ds.train}
    for ex in ds.test:
        if ex.label not in train_labels:
            raise UserError(f"data set '{ds.name}': test label '{ex.label}' appears in no training example")


def ordered(items: list[str], cfg: DataConfig, what: str) -> list[str]:
    """Explicit ``data.order``, else a permutation seeded by ``data.order_seed``, else as given."""
    if cfg.order is not None:
        unknown = [x for x in cfg.order if x not in items]
        if unknown:
            raise UserError(f"data.order: unknown {what} {unknown[0]!r}")
        if len(set(cfg.order)) != len(cfg.order):
            raise UserError(f"data.order: lists a {what} twice")
        return list(cfg.order)
    items = list(items)
    if cfg.order_seed is not None:
        random.Random(cfg.order_seed).shuffle(items)
    return items


def _class_groups(ds: Dataset, cfg: DataConfig) -> list[Group]:
    labels = ordered(sorted({ex.label for ex in ds.train}), cfg, "class")
    n = len(labels)
    if cfg.classes_per_task:
        size = cfg.classes_per_task
    elif cfg.num_tasks:
        size = -(-n // cfg.num_tasks)
        if cfg.exact_division and n % cfg.num_tasks:
            raise UserError(f"data.num_tasks: {n} classes do not divide into {cfg.num_tasks} tasks "
                            "(set data.exact_division: false to allow a smaller last task)")
    else:
        raise UserError("data.classes_per_task: set it (or data.num_tasks) to split classes into tasks")
    if cfg.exact_division and n % size:
        raise UserError(f"data.classes_per_task: {n} classes do not divide into tasks of {size} "
                        "(set data.exact_division: false to allow a smaller last task)")
    groups = []
    for t, start in enumerate(range(0, n, size)):
        chunk = labels[start : start + size]
        keep = set(chunk)
        groups.append((f"task{t}", chunk, [e for e in ds.train if e.label in keep], [e for e in ds.test if e.label in keep]))
    return groups


def _domain_groups(ds: Dataset, cfg: DataConfig, seed: int) -> list[Group]:
    """Domain-incremental: one label space, tasks cut by a field or by a seeded random partition."""
    labels = sorted({ex.label for ex in ds.train})
    if cfg.task_field:
        for ex in ds.train[:1]:
            if cfg.task_field not in ex.fields:
                raise UserError(f"data.task_field: the examples of '{ds.name}' have no field '{cfg.task_field}'")
        names = ordered(sorted({str(ex.fields.get(cfg.task_field)) for ex in ds.train}), cfg, "domain")
        return [(d, labels, [e for e in ds.train if str(e.fields.get(cfg.task_field)) == d],
                 [e for e in ds.test if str(e.fields.get(cfg.task_field)) == d]) for d in names]
    if not cfg.num_tasks:
        raise UserError("data.num_tasks: domain-incremental on one data set needs data.task_field or data.num_tasks")
    rng = random.Random(seed)
    train, test = ds.train[:], ds.test[:]
    rng.shuffle(train)
    rng.shuffle(test)
    k = cfg.num_tasks
    return [(f"task{t}", labels, train[t::k], test[t::k]) for t in range(k)]


def _sequence_groups(cfg: DataConfig, seed: int) -> list[Group]:
    """Several data sets in sequence, one task each; labels are namespaced unless domain-incremental."""
    names = ordered(list(cfg.sequence), cfg, "data set")
    groups = []
    for name in names:
        ds = load_dataset(name, None, seed) if "/" not in name and not name.startswith(".") else load_dataset(None, name, seed)
        ds = Dataset(ds.name, _drop(ds.train, cfg.drop_labels), _drop(ds.test, cfg.drop_labels))
        _check_test_labels(ds)
        shared = cfg.scenario == "domain_incremental"
        rename = (lambda label: label) if shared else (lambda label, n=ds.name: f"{n}:{label}")
        train = [Example(e.text, rename(e.label), e.fields) for e in ds.train]
        test = [Example(e.text, rename(e.label), e.fields) for e in ds.test]
        groups.append((ds.name, sorted({e.label for e in train}), train, test))
    return groups


def _cap(rows: list[Example], k: int | None, rng: random.Random) -> list[Example]:
    """At most k examples per class: a seeded sample, kept in file order."""
    if k is None:
        return rows
    by_label: dict[str, list[int]] = {}
    for i, ex in enumerate(rows):
        by_label.setdefault(ex.label, []).append(i)
    keep = set()
    for label in sorted(by_label):
        idx = by_label[label]
        keep.update(idx if len(idx) <= k else rng.sample(idx, k))
    return [ex for i, ex in enumerate(rows) if i in keep]


def _assemble(groups: list[Group], cfg: DataConfig, seed: int) -> Stream:
    class_names: list[str] = []
    class_id: dict[str, int] = {}
    tasks = []
    rng = random.Random(seed)
    for t, (name, labels, train, test) in enumerate(groups):
        for label in labels:
            if label not in class_id:
                class_id[label] = len(class_names)
                class_names.append(label)
        train = _cap(train, cfg.max_train_per_class, rng)
        if cfg.transform is not None:
            train = transform(train, cfg.transform, t)
        test = _cap(test, cfg.max_test_per_class, rng)
        if not train or not test:
            split = "training" if not train else "test"
            raise UserError(f"data: task {t} ('{name}') has no {split} examples")
        tasks.append(Task(t, name, sorted(class_id[lab] for lab in labels),
                          [e.text for e in train], [class_id[e.label] for e in train],
                          [e.text for e in test], [class_id[e.label] for e in test]))
    if not tasks:
        raise UserError("data: the stream has no tasks")
    return Stream(cfg.scenario, tasks, class_names)
