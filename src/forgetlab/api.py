"""The Python entry points: ``run(config) -> Results`` and ``load(dir) -> Results``."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import UserError


@dataclass
class Results:
    """A finished run: its primary matrix (accuracy, for the built-in kinds) as numpy, the metrics, and
    the full results.json dict; ``matrix(name)`` gives any other of its matrices."""

    accuracy_matrix: np.ndarray
    metrics: dict[str, float | None]
    tasks: list[str]
    run_dir: Path | None
    raw: dict[str, Any]

    @property
    def probe_matrix(self) -> np.ndarray | None:
        p = self.raw.get("probe_matrix")
        return None if p is None else np.asarray(p)

    def matrix(self, name: str) -> np.ndarray:
        """The run's matrix ``name`` (results.json ``matrices``), M[i, j] as numpy."""
        return np.asarray(self.raw["matrices"][name]["values"], dtype=float)

    @classmethod
    def from_dict(cls, raw: dict, run_dir: Path | None = None) -> "Results":
        primary = raw["accuracy_matrix"] if "accuracy_matrix" in raw else next(iter(raw["matrices"].values()))["values"]
        return cls(np.asarray(primary, dtype=float), raw["metrics"], raw["tasks"], run_dir, raw)


def run(config: str | Path | dict | Config, *, overrides: dict[str, Any] | None = None, out: str | Path | None = None,
        store: str | Path | None = None, resume: bool = False) -> Results:
    """Run an experiment from a YAML path, a dict or a Config; returns its Results."""
    from .engine import Engine, default_run_dir
    from .experiment import load_config
    from .store import Store

    cfg = load_config(config, overrides)
    out_dir = Path(out) if out else default_run_dir(cfg)
    engine = Engine(cfg)
    db = Store(Path(store) if store else out_dir.parent / "forgetlab.db")
    return Results.from_dict(engine.run(out_dir, db, resume=resume), out_dir)


def load(run_dir: str | Path) -> Results:
    """The Results of a completed run directory."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise UserError(f"{path}: no results.json (not a run directory, or the run has not finished)")
    raw = json.loads(path.read_text())
    if raw.get("status") != "completed":
        raise UserError(f"{path}: the run's status is {raw.get('status')!r}, not completed")
    return Results.from_dict(raw, Path(run_dir))
