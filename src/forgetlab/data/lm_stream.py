"""Language-modelling streams: text corpora, or the books of one corpus, as a sequence of tasks.

A task's ``train_texts`` are what it trains on and its ``test_texts`` the held-out text it is
evaluated on; it has no classes and no labels. ``data.sequence`` gives one task per corpus (a
built-in corpus, a folder, a ``.txt`` or a ``.jsonl`` file, split as ``corpus_splits`` splits it, or a
built-in labelled data set's training and test texts, its labels ignored);
``data.name`` or ``data.path`` gives one task per book of a text whose books start with a header
line (gutenberg_nltk's training text), each book's last ``data.valid_fraction`` of characters held out.
The order is ``data.order``, else a permutation seeded by ``data.order_seed``, as for other streams.
"""
from __future__ import annotations

from pathlib import Path

from ..config import CorpusConfig, DataConfig
from ..errors import UserError
from .corpus import BUILTIN_CORPORA, builtin_corpus, corpus_splits, folder_files, split_books
from .sources import BUILTIN, load_dataset
from .stream import Stream, Task, ordered
from .text_files import read_text

# A task before it is numbered: (name, training texts, held-out texts).
Group = tuple[str, list[str], list[str]]


def build_lm_stream(cfg: DataConfig, seed: int = 0) -> Stream:
    """The tasks of a ``language_modeling`` data config; every user error names the config key."""
    groups = _corpus_groups(cfg, seed) if cfg.sequence else _book_groups(cfg)
    if cfg.max_tasks:
        groups = groups[: cfg.max_tasks]
    tasks = []
    for t, (name, train, held_out) in enumerate(groups):
        if not any(x.strip() for x in train) or not any(x.strip() for x in held_out):
            raise UserError(f"data: task {t} ('{name}') has no training or no held-out text")
        tasks.append(Task(t, name, [], train, [], held_out, []))
    return Stream("language_modeling", tasks, [])


def _corpus_groups(cfg: DataConfig, seed: int) -> list[Group]:
    """One task per corpus of ``data.sequence``."""
    groups = []
    for entry in ordered(list(cfg.sequence), cfg, "corpus"):
        if entry in BUILTIN and entry not in BUILTIN_CORPORA:      # a labelled data set's texts, labels ignored
            dataset = load_dataset(name=entry)
            groups.append((entry, [e.text for e in dataset.train], [e.text for e in dataset.test]))
            continue
        if entry in BUILTIN_CORPORA:
            builtin_corpus(entry, key="data.sequence")
            corpus = CorpusConfig(name=entry, valid_fraction=cfg.valid_fraction)
        elif Path(entry).exists():
            corpus = CorpusConfig(path=entry, valid_fraction=cfg.valid_fraction)
        else:
            raise UserError(f"data.sequence: unknown corpus '{entry}' (built-in: {', '.join(BUILTIN_CORPORA + BUILTIN)}; "
                            "or a folder, a .txt or a .jsonl file)")
        try:
            train, held_out = corpus_splits(corpus, seed)
        except UserError as exc:
            raise UserError(f"data.sequence: {entry}: {exc}") from None
        groups.append((Path(entry).stem, train, held_out))
    return groups


def _book_groups(cfg: DataConfig) -> list[Group]:
    """One task per book of the training text of ``data.name`` or ``data.path``."""
    key = "data.name" if cfg.name else "data.path"
    source = builtin_corpus(cfg.name, key=key) if cfg.name else Path(cfg.path)
    if source.is_dir():
        source = folder_files(source)[0]
    if not source.is_file():
        raise UserError(f"{key}: {source} not found (a text file, or a corpus folder)")
    books = split_books(read_text(source))
    if not books:
        raise UserError(f"{key}: {source} has no book header lines like '[Emma by Jane Austen 1816]' "
                        "(for one task per corpus, list corpora in data.sequence)")
    text_of = dict(books)
    if len(text_of) < len(books):
        raise UserError(f"{key}: two books of {source} have the same title")
    groups = []
    for title in ordered([title for title, _ in books], cfg, "book"):
        text = text_of[title]
        cut = round(len(text) * (1 - cfg.valid_fraction))
        groups.append((title, [text[:cut]], [text[cut:]]))
    return groups
