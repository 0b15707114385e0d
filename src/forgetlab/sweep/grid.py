"""A sweep file: a base config and a grid over dotted config keys; every combination is one run.

```yaml
name: methods-clinc150
base: clinc150_methods.yaml          # a config file (relative to this file) or an inline mapping
grid:                                # every combination of these lists
  method: [{name: seq}, {name: replay, replay: {size: 50, strategy: class_balanced}}]
zip:                                 # optional: lists of one length, taken element by element
  seed: [0, 1, 2]
  data.order_seed: [0, 1, 2]
out: runs/methods-clinc150           # relative to the working directory
```
The runs are the grid's product crossed with the zipped tuples. Each run's ``name`` labels its grid
point without the replicate keys (seed and task order), so reports average over seeds and orders.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import REPLICATE_PATHS, Config, flatten, load_config
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
    unknown = set(spec) - {"name", "base", "grid", "zip", "out"}
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {sorted(unknown)} (expected name, base, grid, zip, out)")
    base = spec.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise UserError(f"{path}: base: config file {base_path} not found")
        base = yaml.safe_load(base_path.read_text())
    if not isinstance(base, dict):
        raise UserError(f"{path}: base: expected a config file name or a mapping")
    grid, zipped = spec.get("grid") or {}, spec.get("zip") or {}
    for key, lists in (("grid", grid), ("zip", zipped)):
        if not isinstance(lists, dict) or not all(isinstance(v, list) and v for v in lists.values()):
            raise UserError(f"{path}: {key}: expected a mapping of config keys to non-empty lists")
    lengths = {len(v) for v in zipped.values()}
    if len(lengths) > 1:
        raise UserError(f"{path}: zip: the lists must have one length, got "
                        + ", ".join(f"{k}: {len(v)}" for k, v in zipped.items()))
    if set(grid) & set(zipped):
        raise UserError(f"{path}: key(s) {sorted(set(grid) & set(zipped))} in both grid and zip")
    tuples = [dict(zip(zipped, values)) for values in zip(*zipped.values())] or [{}]
    name = str(spec.get("name") or path.stem)
    runs = []
    for values in itertools.product(*grid.values()):
        for extra in tuples:
            point = {**dict(zip(grid, values)), **extra}
            label = _label({k: v for k, v in point.items() if k not in REPLICATE_PATHS}) or name
            try:
                cfg = load_config({**base, "name": label}, overrides=point)
            except UserError as exc:
                raise UserError(f"{path}: grid point {point}: {exc}") from None
            runs.append(SweepRun(label, cfg))
    hashes = [r.config.hash() for r in runs]
    if len(set(hashes)) < len(hashes):
        raise UserError(f"{path}: two grid points give the same config (a key repeated with one value?)")
    return Sweep(name, Path(spec.get("out") or f"runs/{name}"), runs)


def _label(point: dict[str, Any]) -> str:
    """``method=replay(replay.size=50)``-style text for a grid point, the method's name first."""
    parts = []
    for key, value in point.items():
        if isinstance(value, dict):
            inner = {k: v for k, v in flatten(value).items() if k != "name"}
            head = value.get("name", key)
            parts.append(f"{head}({', '.join(f'{k}={v}' for k, v in inner.items())})" if inner else str(head))
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)
