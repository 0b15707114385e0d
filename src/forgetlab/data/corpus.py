"""Unlabelled text: corpora to pretrain on, and collections of texts to test for membership."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

from ..config import CorpusConfig
from ..errors import UserError
from .text_files import read_lines, read_text

BUILTIN_CORPORA = ("gutenberg_nltk", "tinyshakespeare", "wikitext2")
BOOK_HEADER = re.compile(r"^\[(?P<title>.+?) by .+ \d{4}\]\s*$")      # "[Emma by Jane Austen 1816]"


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """A collection of texts: a ``.jsonl`` file (one object a line, its ``text_field``) or a text file
    (one text a non-blank line). An empty text in a JSONL file is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix != ".jsonl":
        return [line for line in read_text(path).splitlines() if line.strip()]
    texts = []
    for n, line in enumerate(read_lines(path), 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)[text_field]
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        except (KeyError, TypeError):
            raise UserError(f"{path}:{n}: expected a JSON object with a '{text_field}' field") from None
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{path}:{n}: empty text")
        texts.append(text)
    return texts


def corpus_splits(cfg: CorpusConfig, seed: int) -> tuple[list[str], list[str]]:
    """(train documents, validation documents) of a pretraining corpus.

    A folder or built-in name gives its training and validation files (``folder_files``, each one document); a
    ``.jsonl`` file gives one document a line, a seeded ``valid_fraction`` of them held out; a single
    ``.txt`` file is cut at ``1 - valid_fraction`` of its characters.
    """
    source = builtin_corpus(cfg.name) if cfg.name else Path(cfg.path)
    if source.is_dir():
        train_file, valid_file = folder_files(source)
        train = [_read(train_file)]
        valid = [_read(Path(cfg.valid_path) if cfg.valid_path else valid_file)]
    elif source.is_file() and source.suffix == ".jsonl":
        docs = read_texts(source, cfg.text_field)
        random.Random(seed).shuffle(docs)
        cut = max(1, round(len(docs) * cfg.valid_fraction))
        train, valid = docs[cut:], docs[:cut]
        if cfg.valid_path:
            train, valid = docs, read_texts(cfg.valid_path, cfg.text_field)
    elif source.is_file():
        text = _read(source)
        cut = round(len(text) * (1 - cfg.valid_fraction))
        train, valid = [text[:cut]], [text[cut:]]
        if cfg.valid_path:
            train, valid = [text], [_read(Path(cfg.valid_path))]
    else:
        raise UserError(f"corpus.path: {source} not found")
    if cfg.max_train_chars:
        train = _truncate(train, cfg.max_train_chars)
    if not any(t.strip() for t in train) or not any(t.strip() for t in valid):
        raise UserError(f"corpus: {source} has no training or no validation text")
    return train, valid


def chunk_text(text: str, chars: int) -> list[str]:
    """Consecutive whole lines joined into texts of at least ``chars`` characters (the tail is dropped)."""
    chunks, current = [], []
    size = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        current.append(line)
        size += len(line) + 1
        if size >= chars:
            chunks.append("\n".join(current))
            current, size = [], 0
    return chunks


def folder_files(folder: Path) -> tuple[Path, Path]:
    """A corpus folder's training and held-out files: ``train.txt`` and ``valid.txt``, or where there
    is no ``train.txt`` (WikiText-2 here), ``valid.txt`` and ``test.txt``."""
    names = ("train.txt", "valid.txt") if (folder / "train.txt").is_file() else ("valid.txt", "test.txt")
    return folder / names[0], folder / names[1]


def split_books(text: str) -> list[tuple[str, str]]:
    """(title, text) of each book of a text where every book starts with a line like
    ``[Emma by Jane Austen 1816]`` (as gutenberg_nltk's); text before the first such line is dropped."""
    books: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        header = BOOK_HEADER.match(line)
        if header:
            books.append((header["title"], []))
        elif books:
            books[-1][1].append(line)
    return [(title, "\n".join(lines)) for title, lines in books]


def builtin_corpus(name: str, key: str = "corpus.name") -> Path:
    """The folder of a built-in corpus in FORGETLAB_DATA_DIR; errors name the config ``key``."""
    if name not in BUILTIN_CORPORA:
        raise UserError(f"{key}: unknown corpus '{name}' (built-in: {', '.join(BUILTIN_CORPORA)}; "
                        "or give a path)")
    folder = Path(os.environ.get("FORGETLAB_DATA_DIR", "")) / name
    if not folder.is_dir():
        raise UserError(f"{key}: {name} not found in FORGETLAB_DATA_DIR ({folder})")
    return folder


def _read(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return read_text(path)


def _truncate(docs: list[str], limit: int) -> list[str]:
    out, left = [], limit
    for doc in docs:
        if left <= 0:
            break
        out.append(doc[:left])
        left -= len(out[-1])
    return out
