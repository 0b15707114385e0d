"""The store's runs as one table, a row per run, for pandas, Polars, DuckDB or Hugging Face ``datasets``:
``forgetlab export --format parquet`` writes it, ``forgetlab.load_store`` returns it as a DataFrame.

Columns: the store's own (``run_id``, ``status``, ``error``, ``created``, ``finished`` ... ``seed``), the
resolved config flattened (``config.<dotted key>``), each metric (``metrics.<key>``), ``tasks``, each
matrix as its rows (``matrix.<name>``: row i after task i, column j on task j) and its baseline row
(``baseline.<name>``), and each general-ability probe before the stream and after each task
(``retention.<probe>``: index 0 before, index i after task i). A running or failed run has nulls
where it has no results. A column whose values no one type holds (a config key an int in one run
and a string in another) is kept as each value's JSON text.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from ..config import flatten
from ..errors import UserError
from .matrices import matrices_of

STORE_COLUMNS = ("run_id", "status", "error", "created", "finished", "out_dir", "config_hash",
                 "method", "dataset", "scenario", "backbone", "seed")


def _pyarrow():
    try:
        import pandas  # noqa: F401  (to_pandas needs it)
        import pyarrow
    except ImportError:
        raise UserError("parquet export and load_store need pandas and pyarrow: pip install 'forgetlab[export]'") from None
    return pyarrow


def _row(run: dict) -> dict:
    """One run's cells, name -> value (columns it has no value for are left out)."""
    row = {key: run[key] for key in STORE_COLUMNS}
    for key in ("created", "finished"):
        row[key] = datetime.fromisoformat(row[key]) if row[key] else None
    row.update({f"config.{k}": v for k, v in flatten(run["config"]).items()})
    results = run.get("results") or {}
    row.update({f"metrics.{k}": v for k, v in (run.get("metrics") or {}).items()})
    row["tasks"] = results.get("tasks")
    for name, m in matrices_of(results).items() if results else ():
        row[f"matrix.{name}"], row[f"baseline.{name}"] = m["values"], m["baseline"]
    for name, probe in ((results.get("retention") or {}).get("probes") or {}).items():
        row[f"retention.{name}"] = probe["values"]
    return row


GROUPS = ("config.", "metrics.", "tasks", "matrix.", "baseline.", "retention.")    # after STORE_COLUMNS


def _type(pa, name: str):
    """The Arrow type of a column (None: inferred from its values, as the config's)."""
    numbers = pa.list_(pa.float64())
    exact = {"created": pa.timestamp("us", tz="UTC"), "finished": pa.timestamp("us", tz="UTC"),
             "seed": pa.int64(), "tasks": pa.list_(pa.string())}
    prefixes = {"metrics.": pa.float64(), "matrix.": pa.list_(numbers), "baseline.": numbers, "retention.": numbers}
    return exact.get(name) or next((t for prefix, t in prefixes.items() if name.startswith(prefix)), None)


def _column(pa, values: list, type_):
    """An Arrow array of ``values``; values no one type holds become JSON text."""
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())


def runs_table(runs: list[dict]):
    """The runs (as ``Store.runs(full=True)`` gives them) as a ``pyarrow.Table``, a row per run."""
    pa = _pyarrow()
    rows = [_row(run) for run in runs]
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in STORE_COLUMNS and k not in names]
    names = [*STORE_COLUMNS, *sorted(names, key=lambda n: next(i for i, p in enumerate(GROUPS) if n.startswith(p)))]
    columns = [_column(pa, [row.get(name) for row in rows], _type(pa, name)) for name in names]
    return pa.Table.from_arrays(columns, names=names)


def write_parquet(runs: list[dict], path: Path) -> None:
    """The runs table as a parquet file."""
    _pyarrow()
    import pyarrow.parquet as pq

    pq.write_table(runs_table(runs), path)


def load_store(path: str | Path):
    """A store's runs as a pandas DataFrame, a row per run: the table ``forgetlab export --format
    parquet`` writes (the module's docstring lists its columns)."""
    from ..store import Store

    if not Path(path).is_file():
        raise UserError(f"{path}: store not found")
    return runs_table(Store(path).runs(full=True)).to_pandas()
