"""Sweeps: a grid of configs run by an executor (local processes)."""
from .grid import Sweep, load_sweep
from .local import run_sweep

__all__ = ["Sweep", "load_sweep", "run_sweep"]
