"""Sequential fine-tuning: train backbone and head on each task in turn (the lower bound)."""
from .base import Method


class Seq(Method):
    name = "seq"
    sharded = True
    task_free = True
