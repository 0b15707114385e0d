"""Where examples come from: local JSONL/CSV files and built-in data set names.

A built-in name resolves to ``$FORGETLAB_DATA_DIR/<name>`` when that folder exists, else to a
converted copy in the forgetlab cache, else it is fetched from the Hugging Face hub and converted.
"""
from __future__ import annotations

import csv
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .text_files import json_object, read_lines, read_text

BUILTIN = ("clinc150", "banking77", "fewrel", "agnews", "yelp", "amazon", "dbpedia", "yahoo", "20newsgroups")
# Subfolders of FORGETLAB_DATA_DIR tried for a built-in name, in order.
_LOCAL_LAYOUTS = ("{name}", "cl5_textcls/{name}")


@dataclass
class Example:
    text: str
    label: str
    fields: dict = field(default_factory=dict)  # extra fields of the source line, kept as they are


@dataclass
class Dataset:
    name: str
    train: list[Example]
    test: list[Example]


def cache_dir() -> Path:
    """Root of forgetlab's caches (converted data sets, frozen features)."""
    return Path(os.environ.get("FORGETLAB_CACHE_DIR") or Path.home() / ".cache" / "forgetlab")


def resolve_builtin(name: str) -> Path:
    """The local folder holding a built-in data set, fetching it from the hub if needed."""
    data_dir = os.environ.get("FORGETLAB_DATA_DIR")
    if data_dir:
        for layout in _LOCAL_LAYOUTS:
            folder = Path(data_dir) / layout.format(name=name)
            if (folder / "train.jsonl").is_file():
                return folder
    cached = cache_dir() / "datasets" / name
    if (cached / "train.jsonl").is_file():
        return cached
    from .hub import fetch_builtin

    return fetch_builtin(name, cached)


def load_dataset(name: str | None = None, path: str | None = None, seed: int = 0) -> Dataset:
    """A built-in data set by name, or a local folder / single file by path."""
    if name is not None:
        if name not in BUILTIN:
            raise UserError(f"data.name: unknown data set '{name}' (built-in: {', '.join(BUILTIN)}; use data.path for a local folder)")
        folder = resolve_builtin(name)
        return Dataset(name, read_split(folder, "train"), read_split(folder, "test"))
    p = Path(path)
    if p.is_dir():
        return Dataset(p.name, read_split(p, "train"), read_split(p, "test"))
    if p.is_file():
        return _split_single_file(p, seed)
    raise UserError(f"data.path: '{path}' does not exist")


def read_split(folder: Path, split: str) -> list[Example]:
    """``folder/<split>.jsonl`` or ``folder/<split>.csv``."""
    for suffix, reader in ((".jsonl", read_jsonl), (".csv", read_csv)):
        f = folder / f"{split}{suffix}"
        if f.is_file():
            return reader(f)
    raise UserError(f"{folder}: no {split}.jsonl or {split}.csv")


def read_jsonl(path: Path) -> list[Example]:
    out = []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        out.append(_example(json_object(line, path, n, "a JSON object with 'text' and 'label'"), path, n))
    return out


def read_csv(path: Path) -> list[Example]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    missing = {"text", "label"} - set(reader.fieldnames or [])
    if missing:
        raise UserError(f"{path}:1: CSV header lacks column(s) {', '.join(sorted(missing))}")
    return [_example(row, path, n) for n, row in enumerate(reader, 2)]


def _example(row: dict, path: Path, n: int) -> Example:
    for key in ("text", "label"):
        if key not in row or row[key] is None:
            raise UserError(f"{path}:{n}: missing '{key}'")
    text = row["text"]
    if not isinstance(text, str):
        raise UserError(f"{path}:{n}: 'text' must be a string")
    extra = {k: v for k, v in row.items() if k not in ("text", "label")}
    return Example(text, str(row["label"]), extra)


def _split_single_file(path: Path, seed: int, test_fraction: float = 0.2) -> Dataset:
    """A single JSONL/CSV file: a seeded, per-class 80/20 train/test split."""
    rows = read_csv(path) if path.suffix == ".csv" else read_jsonl(path)
    by_label: dict[str, list[Example]] = {}
    for ex in rows:
        by_label.setdefault(ex.label, []).append(ex)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        k = max(1, round(len(group) * test_fraction)) if len(group) > 1 else 0
        test += group[:k]
        train += group[k:]
    return Dataset(path.stem, train, test)
