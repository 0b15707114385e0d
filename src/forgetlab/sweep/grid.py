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

A study (``examples/studies/``) adds three optional keys:

```yaml
pretrain:                            # language models the runs start from, trained first (once)
  - {config: pretrain_gutenberg.yaml, set: {model.size: tiny, out: runs/studies/pretrain/gpt2-tiny}}
presets:                             # named variants; --preset picks one (default: the first)
  small: {set: {data.max_train_tokens: 16384}, pretrain_set: {train.steps: 400}, zip: {seed: [0, 1, 2]}}
  full:  {set: {...}, pretrain_set: {...}, grid: {...}, out: runs/studies/scale-full}
study: {title: ..., kind: line, x: backbone.parameters, y: [metrics.forgetting_nll], series: backbone.init}
```
A preset's ``set`` overrides the base config, ``pretrain_set`` every pretraining config, its
``pretrain`` list replaces the sweep's, and its ``grid``/``zip`` lists replace those of the same key; ``study`` is the figure (report/study.py).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pydantic import ValidationError

from ..config import REPLICATE_PATHS, Config, PretrainConfig, flatten, load_pretrain_config
from ..errors import UserError
from ..experiment import load_config
from ..report.study import StudySpec

PRESET_KEYS = {"set", "pretrain_set", "pretrain", "grid", "zip", "out"}


@dataclass
class SweepRun:
    label: str            # the grid point without the seed: what a report groups by
    config: Config


@dataclass
class Sweep:
    name: str
    out: Path
    runs: list[SweepRun]
    pretrain: list[PretrainConfig] = field(default_factory=list)
    study: StudySpec | None = None
    preset: str | None = None


def load_sweep(path: Path, preset: str | None = None) -> Sweep:
    if not path.is_file():
        raise UserError(f"{path}: sweep file not found")
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    known = ("name", "base", "grid", "zip", "out", "pretrain", "presets", "study")
    unknown = set(spec) - set(known)
    if unknown:
        raise UserError(f"{path}: unknown sweep key(s) {sorted(unknown)} (expected {', '.join(known)})")
    chosen, preset = _preset(path, spec.get("presets"), preset)
    base = spec.get("base")
    if isinstance(base, str):
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise UserError(f"{path}: base: config file {base_path} not found")
        base = yaml.safe_load(base_path.read_text())
    if not isinstance(base, dict):
        raise UserError(f"{path}: base: expected a config file name or a mapping")
    grid = {**(spec.get("grid") or {}), **(chosen.get("grid") or {})}
    zipped = {**(spec.get("zip") or {}), **(chosen.get("zip") or {})}
    overrides = chosen.get("set") or {}
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
                cfg = load_config({**base, "name": label}, overrides={**overrides, **point})
            except UserError as exc:
                raise UserError(f"{path}: grid point {point}: {exc}") from None
            runs.append(SweepRun(label, cfg))
    hashes = [r.config.hash() for r in runs]
    if len(set(hashes)) < len(hashes):
        raise UserError(f"{path}: two grid points give the same config (a key repeated with one value?)")
    out = Path(chosen.get("out") or spec.get("out") or f"runs/{name}")
    entries = chosen["pretrain"] if "pretrain" in chosen else spec.get("pretrain") or []
    pretrain = _pretrain_configs(path, entries, chosen.get("pretrain_set") or {})
    return Sweep(name, out, runs, pretrain, _study(path, spec.get("study")), preset)


def _preset(path: Path, presets, name: str | None) -> tuple[dict, str | None]:
    """The chosen preset's settings and name (the first preset when none is named)."""
    if presets is None:
        if name is not None:
            raise UserError(f"{path}: --preset {name}: this sweep has no presets")
        return {}, None
    if not isinstance(presets, dict) or not presets:
        raise UserError(f"{path}: presets: expected a mapping of preset names to settings")
    name = name or next(iter(presets))
    if name not in presets:
        raise UserError(f"{path}: --preset {name}: unknown preset (this sweep has {', '.join(presets)})")
    chosen = presets[name] or {}
    unknown = set(chosen) - PRESET_KEYS if isinstance(chosen, dict) else {"(not a mapping)"}
    if unknown:
        raise UserError(f"{path}: presets.{name}: unknown key(s) {sorted(unknown)} (expected {', '.join(sorted(PRESET_KEYS))})")
    return chosen, name


def _pretrain_configs(path: Path, entries, common: dict) -> list[PretrainConfig]:
    """The pretraining configs of the ``pretrain`` list, each with ``common`` and then its own ``set``."""
    if not isinstance(entries, list):
        raise UserError(f"{path}: pretrain: expected a list of {{config: FILE, set: {{KEY: VALUE}}}}")
    configs = []
    for n, entry in enumerate(entries):
        if not isinstance(entry, dict) or "config" not in entry or set(entry) - {"config", "set"}:
            raise UserError(f"{path}: pretrain[{n}]: expected {{config: FILE, set: {{KEY: VALUE}}}}")
        source = (path.parent / entry["config"]).resolve()
        if not source.is_file():
            raise UserError(f"{path}: pretrain[{n}].config: {source} not found")
        overrides = {**common, **(entry.get("set") or {})}
        if "out" not in overrides:
            raise UserError(f"{path}: pretrain[{n}].set: give an out folder (the runs name its checkpoints)")
        configs.append(load_pretrain_config(source, overrides))
    return configs


def _study(path: Path, spec) -> StudySpec | None:
    if spec is None:
        return None
    try:
        return StudySpec.model_validate(spec)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        raise UserError(f"{path}: study.{where}: {message}" if where else f"{path}: {message}") from None


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
