"""The local executor: each run in its own process (clean peak-memory figures, failures contained),
``workers`` at a time; runs whose config already completed in the store are skipped."""
from __future__ import annotations

import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from rich.console import Console

from ..config import dump_config
from ..store import Store
from .grid import Sweep, SweepRun


def run_sweep(sweep: Sweep, workers: int = 1, console: Console | None = None) -> dict[str, int]:
    """Run every grid point not yet completed; returns counts of done, skipped and failed runs."""
    console = console or Console(stderr=True)
    sweep.out.mkdir(parents=True, exist_ok=True)
    db = sweep.out / "forgetlab.db"
    completed = Store(db).completed_hashes()
    todo = [r for r in sweep.runs if r.config.hash() not in completed]
    console.print(f"sweep {sweep.name}: {len(sweep.runs)} runs, {len(sweep.runs) - len(todo)} already done, "
                  f"{len(todo)} to run with {workers} worker(s); store {db}")

    def one(item: tuple[int, SweepRun]) -> bool:
        k, run = item
        run_dir = sweep.out / f"{_slug(run.label)}-seed{run.config.seed}-{run.config.hash()[:8]}"
        run_dir.mkdir(parents=True, exist_ok=True)
        config_file = run_dir / "sweep-config.yaml"
        dump_config(run.config, config_file)
        cmd = [sys.executable, "-m", "forgetlab.cli", "run", str(config_file), "--out", str(run_dir), "--store", str(db)]
        if (run_dir / "checkpoint" / "state.json").is_file():
            cmd.append("--resume")                       # an interrupted earlier attempt
        log = run_dir / "log.txt"
        with open(log, "w") as fh:
            code = subprocess.call(cmd, stdout=fh, stderr=subprocess.STDOUT)
        status = "done" if code == 0 else f"FAILED (exit {code}, see {log})"
        console.print(f"[{k + 1}/{len(todo)}] {run.label} seed={run.config.seed}: {status}")
        return code == 0

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        ok = list(pool.map(one, enumerate(todo)))
    return {"done": sum(ok), "skipped": len(sweep.runs) - len(todo), "failed": len(ok) - sum(ok)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")[:80]
