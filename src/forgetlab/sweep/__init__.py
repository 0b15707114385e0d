"""Sweeps: a grid of configs run by an executor (local processes or Ray), resumable through the store."""
from .driver import run_sweep
from .grid import Sweep, load_sweep

__all__ = ["Sweep", "load_sweep", "run_sweep"]
