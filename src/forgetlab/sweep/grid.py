"""A sweep file: a base config and a grid over dotted config keys; every combination is one run.

```yaml
name: methods-clinc150
base: clinc150_methods.yaml          # a config file (relative to this file) or an inline mapping
grid:
  method: [{name: seq}, {name: replay, replay: {size: 50, strategy: class_balanced}}]
  seed: [0, 1, 2]
out: runs/methods-clinc150           # relative to the working directory
```
Each run's ``name`` labels its grid point without the seed, so reports group seeds together.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, load_config
from ..errors import UserError


@dataclass
class SweepRun:
    label: str            # the grid point without the seed: what a report groups by
    config: Config


@dataclass
class Sweep:
    name: str
    out: Path
    runs: list[SweepRun]


def load_sweep(path: Path) -> Sweep:
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    unknown = set(spec) - {"name", "base", "grid", "out"}
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {sorted(unknown)} (expected name, base, grid, out)")
    base = spec.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise UserError(f"{path}: base: config file {base_path} not found")
        base = yaml.safe_load(base_path.read_text())
    if not isinstance(base, dict):
        raise UserError(f"{path}: base: expected a config file name or a mapping")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise UserError(f"{path}: grid: expected a mapping of config keys to non-empty lists")
    name = str(spec.get("name") or path.stem)
    runs = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values))
        label = _label({k: v for k, v in point.items() if k != "seed"}) or name
        try:
            cfg = load_config({**base, "name": label}, overrides=point)
        except UserError as exc:
            raise UserError(f"{path}: grid point {point}: {exc}") from None
        runs.append(SweepRun(label, cfg))
    return Sweep(name, Path(spec.get("out") or f"runs/{name}"), runs)


def _label(point: dict[str, Any]) -> str:
    """``method=replay(replay.size=50)``-style text for a grid point, the method's name first."""
    parts = []
    for key, value in point.items():
        if isinstance(value, dict):
            inner = {k: v for k, v in _flatten(value).items() if k != "name"}
            head = value.get("name", key)
            parts.append(f"{head}({', '.join(f'{k}={v}' for k, v in inner.items())})" if inner else str(head))
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
