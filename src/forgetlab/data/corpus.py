"""Unlabelled text: corpora to pretrain on, and collections of texts to test for membership."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

from ..config import CorpusConfig
from ..errors import UserError

BUILTIN_CORPORA = ("gutenberg_nltk", "tinyshakespeare")


def read_texts(path: str | Path, text_field: str = "text") -> list[str]:
    """A collection of texts: a ``.jsonl`` file (one object a line, its ``text_field``) or a text file
    (one text a non-blank line). An empty text in a JSONL file is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.suffix != ".jsonl":
        return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    texts = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
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

    A folder or built-in name gives its ``train.txt`` and ``valid.txt`` (each one document); a
    ``.jsonl`` file gives one document a line, a seeded ``valid_fraction`` of them held out; a single
    ``.txt`` file is cut at ``1 - valid_fraction`` of its characters.
    """
    source = _builtin_corpus(cfg.name) if cfg.name else Path(cfg.path)
    if source.is_dir():
        train = [_read(source / "train.txt")]
        valid = [_read(Path(cfg.valid_path) if cfg.valid_path else source / "valid.txt")]
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


def _builtin_corpus(name: str) -> Path:
    if name not in BUILTIN_CORPORA:
        raise UserError(f"corpus.name: unknown corpus '{name}' (built-in: {', '.join(BUILTIN_CORPORA)}; "
                        "or give corpus.path)")
    folder = Path(os.environ.get("FORGETLAB_DATA_DIR", "")) / name
    if not (folder / "train.txt").is_file():
        raise UserError(f"corpus.name: {name} not found in FORGETLAB_DATA_DIR ({folder})")
    return folder


def _read(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return path.read_text(encoding="utf-8", errors="replace")


def _truncate(docs: list[str], limit: int) -> list[str]:
    out, left = [], limit
    for doc in docs:
        if left <= 0:
            break
        out.append(doc[:left])
        left -= len(out[-1])
    return out
