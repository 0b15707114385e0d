"""Data sets of the task YAMLs in this folder, read when a task loads (``custom_dataset: !function``):
MMLU from FORGETLAB_DATA_DIR (never copied into the repository) and a made-up four-item quiz."""
from __future__ import annotations

import os
from pathlib import Path

import datasets

HERE = Path(__file__).parent


def mmlu_local(**_) -> datasets.DatasetDict:
    """qa_probes/mmlu of FORGETLAB_DATA_DIR: its val split as ``validation`` (what the harness scores),
    its dev split as ``dev`` (few-shot examples)."""
    root = Path(os.environ.get("FORGETLAB_DATA_DIR", "")) / "qa_probes" / "mmlu"
    files = {"validation": root / "val.jsonl", "dev": root / "dev.jsonl"}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"mmlu_local needs FORGETLAB_DATA_DIR with qa_probes/mmlu: {missing[0]} not found")
    return datasets.load_dataset("json", data_files={k: str(v) for k, v in files.items()})


def tiny_quiz(**_) -> datasets.DatasetDict:
    """tiny_quiz.jsonl beside this file, as ``validation``."""
    return datasets.load_dataset("json", data_files={"validation": str(HERE / "tiny_quiz.jsonl")})
