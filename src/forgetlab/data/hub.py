"""Fetch a built-in text-classification data set from the Hugging Face hub into forgetlab's local format.

Needs the optional `datasets` library (`pip install 'forgetlab[hub]'`). Set FORGETLAB_HUB_MIRROR to a folder
holding copies of the hub repositories (`$FORGETLAB_HUB_MIRROR/<repo id>/...`, the hub's own layout, README.md
included where the repository has named configs, e.g. clinc150's "plus") to work without network access.
With HF_HUB_OFFLINE or HF_DATASETS_OFFLINE set and no mirror, a fetch fails at once with a UserError.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from forgetlab.errors import UserError

MIRROR_ENV = "FORGETLAB_HUB_MIRROR"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")   # either one set: no hub, only the mirror
POOL_TEST_FRACTION = 0.2
POOL_SEED = 0
# Label names as in the local copies under ../shared/data, so a fetched copy and a local one agree.
# Yelp and Amazon share one label space (1..5 stars), so the two can share a head.
STARS = ("very negative", "negative", "neutral", "positive", "very positive")
AGNEWS = ("World", "Sports", "Business", "Science or Technology")
DBPEDIA = ("Company", "Educational Institution", "Artist", "Athlete", "Office Holder", "Mean of Transportation",
           "Building", "Natural Place", "Village", "Animal", "Plant", "Album", "Film", "Written Work")


@dataclass(frozen=True)
class HubSpec:
    """Where a built-in data set lives on the hub and how its rows become {"text", "label"}."""

    repo: str
    text: str  # str.format template over hub columns; a list column (e.g. tokens) is joined with spaces
    label: str  # the hub's label column
    config: str | None = None
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})  # ours -> hub
    label_names: tuple[str, ...] | None = None  # names for an int label column, in place of its ClassLabel names
    pool: tuple[str, ...] = ()  # hub splits to pool and re-split per label into train/test (used instead of splits)


HUB_SPECS: dict[str, HubSpec] = {
    # The "plus" config's intent names already call the out-of-scope class "oos"; it is kept.
    "clinc150": HubSpec(
        "clinc/clinc_oos", "{text}", "intent", config="plus",
        splits={"train": "train", "validation": "validation", "test": "test"},
    ),
    "banking77": HubSpec("PolyAI/banking77", "{text}", "label"),
    # FewRel's 80 public relations (train_wiki 64 + val_wiki 16) have no test split: pool and re-split 80/20.
    "fewrel": HubSpec("thunlp/few_rel", "{tokens}", "relation", splits={}, pool=("train_wiki", "val_wiki")),
    # The hub's AG News has one `text` column (title and description already joined), no separate title.
    "agnews": HubSpec("fancyzhx/ag_news", "{text}", "label", label_names=AGNEWS),
    "yelp": HubSpec("Yelp/yelp_review_full", "{text}", "label", label_names=STARS),
    # The original amazon_reviews_multi is gone from the hub; this is its English part, label = stars - 1
    # (0..4, a plain int column).
    "amazon": HubSpec(
        "SetFit/amazon_reviews_multi_en", "{text}", "label", label_names=STARS,
        splits={"train": "train", "validation": "validation", "test": "test"},
    ),
    "dbpedia": HubSpec("fancyzhx/dbpedia_14", "Title: {title}\nText: {content}", "label", label_names=DBPEDIA),
    "yahoo": HubSpec(
        "community-datasets/yahoo_answers_topics", "{question_title} {question_content} {best_answer}", "topic",
    ),
    "20newsgroups": HubSpec("SetFit/20_newsgroups", "{text}", "label_text"),
}


def fetch_builtin(name: str, dest: Path) -> Path:
    """Download data set `name` and write it to `dest` as train/test(/validation).jsonl plus labels.json."""
    if name not in HUB_SPECS:
        raise UserError(f"unknown built-in data set {name!r}; known: {', '.join(sorted(HUB_SPECS))}")
    spec = HUB_SPECS[name]
    hub = _load(name, spec)
    if spec.pool:
        pooled = [row for split in spec.pool for row in _rows(name, spec, hub, split)]
        train, test = split_per_label(pooled, POOL_TEST_FRACTION, POOL_SEED)
        parts = {"train": train, "test": test}
    else:
        parts = {ours: _rows(name, spec, hub, theirs) for ours, theirs in spec.splits.items()}

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for split, rows in parts.items():
            with open(tmp / f"{split}.jsonl", "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        labels = sorted({row["label"] for rows in parts.values() for row in rows})
        (tmp / "labels.json").write_text(json.dumps(labels, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
        _swap_in(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def split_per_label(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split rows into (train, test), each label's examples shuffled with `seed`; keeps the input order."""
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_label[row["label"]].append(i)
    rng = random.Random(seed)
    test: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        rng.shuffle(idx)
        test.update(idx[: round(len(idx) * test_fraction)])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def _load(name: str, spec: HubSpec):
    """The hub data set as a DatasetDict, from the hub or from the mirror folder."""
    mirror = os.environ.get(MIRROR_ENV)
    offline = [var for var in OFFLINE_ENV if os.environ.get(var, "").upper() in ("1", "ON", "YES", "TRUE")]
    if offline and not mirror:           # fail at once, never wait on the network's retries
        data_dir = os.environ.get("FORGETLAB_DATA_DIR") or "not set"
        raise UserError(f"{name}: no copy in FORGETLAB_DATA_DIR ({data_dir}) and the Hugging Face hub is off "
                        f"({offline[0]}={os.environ[offline[0]]}); set FORGETLAB_DATA_DIR or {MIRROR_ENV}")
    try:
        import datasets
    except ImportError as e:
        raise UserError(f"{name}: fetching from the Hugging Face hub needs `datasets`: pip install 'forgetlab[hub]'") from e
    path = str(Path(mirror) / spec.repo) if mirror else spec.repo
    if mirror and not Path(path).is_dir():
        raise UserError(f"{name}: {MIRROR_ENV} is set but the mirror has no folder {path}")
    try:
        # trust_remote_code=False: never run a loading script (newer `datasets` ignores a False value).
        return datasets.load_dataset(path, spec.config, trust_remote_code=False)
    except Exception as e:  # datasets raises many types here: network, missing repo, bad files
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        where = "the mirror" if mirror else "the Hugging Face hub"
        raise UserError(f"{name}: could not load {path} from {where}: {reason}") from e


def _rows(name: str, spec: HubSpec, hub, split: str) -> list[dict]:
    """One hub split as [{"text", "label"}] with the label as its class name."""
    if split not in hub:
        raise UserError(f"{name}: {spec.repo} has no split {split!r} (it has {', '.join(hub)})")
    ds = hub[split]
    fields = [f for _, f, _, _ in string.Formatter().parse(spec.text) if f]
    missing = [c for c in [*fields, spec.label] if c not in ds.column_names]
    if missing:
        raise UserError(
            f"{name}: {spec.repo} split {split!r} has no column {', '.join(missing)} (it has {', '.join(ds.column_names)})"
        )
    names = spec.label_names or getattr(ds.features[spec.label], "names", None)
    rows = []
    for batch in ds.select_columns([*dict.fromkeys([*fields, spec.label])]).iter(batch_size=1000):
        for i, label in enumerate(batch[spec.label]):
            if names and isinstance(label, int):
                if not 0 <= label < len(names):
                    raise UserError(f"{name}: {spec.repo} split {split!r} has label {label}, not one of its {len(names)} classes")
                label = names[label]
            values = {f: _str(batch[f][i]) for f in fields}
            rows.append({"text": spec.text.format(**values), "label": str(label)})
    return rows


def _str(value) -> str:
    """A column value as text: lists joined with spaces, None as empty."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def _swap_in(tmp: Path, dest: Path) -> None:
    """Rename the finished folder `tmp` to `dest`, replacing what was there."""
    if not dest.exists():
        tmp.rename(dest)
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
    dest.rename(trash / "old")
    tmp.rename(dest)
    shutil.rmtree(trash, ignore_errors=True)
