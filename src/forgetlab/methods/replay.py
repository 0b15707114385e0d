"""Experience replay: "On Tiny Episodic Memories in Continual Learning" (Chaudhry et al., 2019).

A fixed-size memory (reservoir or class-balanced) of past examples; every training batch is
joined by a batch drawn from the memory and the model takes one step on the union. The memory
lives in the base class, so any method composes with it; this is sequential fine-tuning plus it.
"""
from __future__ import annotations

from .base import Method, MethodConfig
from .components.memory import ReplayConfig


class ReplayMethodConfig(MethodConfig):
    replay: ReplayConfig = ReplayConfig()


class Replay(Method):
    name = "replay"
    Config = ReplayMethodConfig
