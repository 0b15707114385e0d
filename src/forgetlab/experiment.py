"""A config resolved for a run: the generic sections validated by ``config.py``, the data section by
its task kind (``kinds/``) and the method section by its method (``methods/``).

It lives above ``config.py`` so that the config knows neither registry: each kind and each method
validates its own section, and every error is still one line naming the file, the line and the key.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .config import Config, _at, _describe, read_yaml, validate
from .errors import UserError
from .kinds import KINDS, kind_class
from .methods import method_class


def load_config(source: str | Path | dict | Config, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML file (or take a dict/Config), apply overrides, validate, and resolve the kind's and
    the method's sections."""
    raw, where, lines = read_yaml(source.to_dict() if isinstance(source, Config) else source, overrides)
    cfg = validate(Config, raw, where, lines)
    scenario = cfg.data.scenario
    try:
        kind = kind_class(scenario)
    except KeyError as exc:
        raise UserError(f"{_at(where, lines, ('data', 'scenario'))}: data.scenario: {exc.args[0]}") from None
    given = {**cfg.data.model_dump(exclude_unset=True), "scenario": scenario}    # unset keys take the kind's defaults
    data = _without_other_kinds_keys(given, cfg.data.model_extra or {}, kind, where, lines)
    cfg.data = _section(kind.Data, data, where, lines, "data")
    name = cfg.method.get("name")
    if not isinstance(name, str):
        problem = "required key is missing" if name is None else f"expected a method name (got {name!r})"
        raise UserError(f"{_at(where, lines, ('method', 'name'))}: method.name: {problem}")
    try:
        method = method_class(name)
    except KeyError as exc:
        raise UserError(f"{_at(where, lines, ('method', 'name'))}: method.name: {exc.args[0]}") from None
    cfg.method = _section(method.Config, cfg.method, where, lines, "method").model_dump(mode="json")
    return cfg


def _section(model: type[BaseModel], raw: dict, where: str, lines: dict, key: str) -> BaseModel:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_describe(exc, model, where, lines, prefix=(key,))) from None


def _without_other_kinds_keys(data: dict, extra: dict, kind, where: str, lines: dict) -> dict:
    """The data section less the keys of other kinds left at their defaults (a resolved config.yaml
    lists every key); a key another kind reads, set here, is an error naming the kind it belongs to."""
    data = dict(data)
    for key, value in extra.items():
        other = next((k for k in KINDS.values() if k is not kind and key in k.Data.model_fields), None)
        if other is None:
            continue                    # unknown everywhere: the kind's section reports it
        if value != other.Data.model_fields[key].get_default(call_default_factory=True):
            raise UserError(f"{_at(where, lines, ('data', key))}: data.{key}: only for data.scenario: "
                            f"{' | '.join(other.scenarios)}, not {data['scenario']}")
        del data[key]
    return data
