"""The SQLite store of runs: one row per run, safe to share between processes."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from forgetlab.errors import UserError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    config_hash TEXT NOT NULL,
    config      TEXT NOT NULL,
    created     TEXT NOT NULL,
    finished    TEXT,
    out_dir     TEXT NOT NULL,
    method      TEXT,
    dataset     TEXT,
    scenario    TEXT,
    backbone    TEXT,
    seed        INTEGER,
    metrics     TEXT,
    results     TEXT,
    error       TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_config_hash ON runs (config_hash);
"""

_RUN_COLUMNS = (
    "run_id", "status", "config_hash", "created", "finished", "out_dir",
    "method", "dataset", "scenario", "backbone", "seed", "metrics", "error",
)
_CSV_COLUMNS = (
    "run_id", "status", "method", "dataset", "scenario", "backbone", "seed", "config_hash", "out_dir",
)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _dir_key(out_dir: str | Path) -> str:
    """A run directory as the store records it: absolute, so every spelling of it is one key."""
    return str(Path(out_dir).resolve())


def _describe(config: dict) -> dict[str, Any]:
    """The columns denormalised from a resolved config, for filtering without parsing JSON."""
    data = config["data"]
    backbone = config["backbone"]
    return {
        "method": config["method"]["name"],
        "dataset": data.get("name") or data.get("path") or "+".join(data.get("sequence") or []),
        "scenario": data["scenario"],
        "backbone": backbone.get("name") or backbone.get("arch"),
        "seed": config["seed"],
    }


def _wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. A new file's switch takes an exclusive lock that SQLite's busy timeout does not
    wait for, so two processes creating one store at once retry here instead of failing."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Store:
    """Runs, their configs, metrics and results in one SQLite file (WAL mode, one transaction per write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            _wal(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, SCHEMA_VERSION):
                    raise UserError(
                        f"{self.path}: store schema version {version}, this forgetlab reads version {SCHEMA_VERSION}"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A fresh autocommit connection, so a Store is safe across threads and processes."""
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.row_factory = sqlite3.Row
            yield conn
        finally:
            conn.close()

    def _write(self, sql: str, params: tuple) -> int:
        """Run one statement in its own transaction; return the rows changed."""
        return self._write_many([(sql, params)])

    def _write_many(self, statements: list[tuple[str, tuple]]) -> int:
        """Run statements in one BEGIN IMMEDIATE transaction; return the rows the last one changed."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    changed = conn.execute(sql, params).rowcount
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return changed

    def begin(self, run_id: str, config_hash: str, config: dict, out_dir: str) -> None:
        """Record a run as 'running'. A run directory holds one run: earlier rows for it (a resumed
        run's own row, or an attempt that was killed before its first checkpoint) are replaced."""
        cols = _describe(config)
        out_dir = _dir_key(out_dir)
        self._write_many([
            ("DELETE FROM runs WHERE out_dir = ? AND run_id != ?", (str(out_dir), run_id)),
            ("INSERT OR REPLACE INTO runs (run_id, status, config_hash, config, created, out_dir,"
             " method, dataset, scenario, backbone, seed)"
             " VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             (run_id, config_hash, json.dumps(config), _now(), str(out_dir),
              cols["method"], cols["dataset"], cols["scenario"], cols["backbone"], cols["seed"])),
        ])

    def complete(self, run_id: str, results: dict) -> None:
        """Mark a run completed, storing its metrics and full results."""
        changed = self._write(
            "UPDATE runs SET status = 'completed', metrics = ?, results = ?, finished = ?, error = NULL"
            " WHERE run_id = ?",
            (json.dumps(results.get("metrics")), json.dumps(results), _now(), run_id),
        )
        if not changed:
            raise KeyError(f"no run {run_id!r} in {self.path}")

    def fail(self, run_id: str, error: str) -> None:
        """Mark a run failed with its error text."""
        changed = self._write(
            "UPDATE runs SET status = 'failed', error = ?, finished = ? WHERE run_id = ?",
            (error, _now(), run_id),
        )
        if not changed:
            raise KeyError(f"no run {run_id!r} in {self.path}")

    def _select(self, where: str = "", params: tuple = (), full: bool = False) -> list[dict]:
        columns = _RUN_COLUMNS + (("config", "results") if full else ())
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(columns)} FROM runs {where} ORDER BY created DESC, rowid DESC", params
            ).fetchall()
        runs = []
        for row in rows:
            run = dict(row)
            for key in ("metrics", "config", "results"):
                if key in run:
                    run[key] = json.loads(run[key]) if run[key] is not None else None
            runs.append(run)
        return runs

    def runs(self, status: str | None = None, full: bool = False) -> list[dict]:
        """All runs, newest first, optionally only those with one status (``full``: with config and results)."""
        if status is None:
            return self._select(full=full)
        return self._select("WHERE status = ?", (status,), full=full)

    def get(self, run_id: str) -> dict | None:
        """One run with its config and full results (None until completed), or None if unknown."""
        found = self._select("WHERE run_id = ?", (run_id,), full=True)
        return found[0] if found else None

    def for_dir(self, out_dir: str | Path) -> dict | None:
        """The run recorded for a run directory, or None."""
        found = self._select("WHERE out_dir = ?", (_dir_key(out_dir),))
        return found[0] if found else None

    def completed(self) -> list[dict]:
        """Completed runs with their config and full results, newest first."""
        return self._select("WHERE status = 'completed'", full=True)

    def completed_hashes(self) -> set[str]:
        """The config hashes of completed runs, so a sweep can skip them."""
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT config_hash FROM runs WHERE status = 'completed'").fetchall()
        return {row[0] for row in rows}

    def export(self, fmt: str, keep: Callable[[dict], bool] | None = None) -> str:
        """All runs (or those ``keep`` accepts) as CSV (one column per metric) or JSON (with full results)."""
        if fmt not in ("csv", "json"):
            raise ValueError(f"unknown export format {fmt!r}; use 'csv' or 'json'")
        runs = [r for r in self._select(full=True) if keep is None or keep(r)]
        if fmt == "json":
            return json.dumps(runs, indent=2)
        metric_keys: list[str] = []
        for run in runs:
            for key in run["metrics"] or {}:
                if key not in metric_keys:
                    metric_keys.append(key)
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*_CSV_COLUMNS, *metric_keys])
        for run in runs:
            metrics = run["metrics"] or {}
            writer.writerow([*(run[c] for c in _CSV_COLUMNS), *(metrics.get(k) for k in metric_keys)])
        return out.getvalue()
