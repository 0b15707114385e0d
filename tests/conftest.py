import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("FORGETLAB_DATA_DIR") or ROOT.parent / "shared" / "data")
os.environ["FORGETLAB_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own feature/data cache, never the user's."""
    monkeypatch.setenv("FORGETLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_config(**sections) -> dict:
    """A config for a nano GPT-2-style model on a small CLINC150 stream: a run takes a few seconds."""
    cfg = {
        "seed": 0,
        "backbone": {"arch": "gpt2", "size": "nano", "max_length": 24},
        "data": {"name": "clinc150", "classes_per_task": 5, "max_tasks": 3,
                 "max_train_per_class": 8, "max_test_per_class": 4},
        "method": {"name": "seq"},
        "train": {"epochs": 1, "batch_size": 8, "lr_backbone": 1e-3, "lr_head": 1e-2, "progress": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
