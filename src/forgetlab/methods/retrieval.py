"""Retrieval alone: the frozen model answers with the k nearest stored examples of the tasks seen as
demonstrations in its prompt, and is never fine-tuned (external memory instead of training; the
episodic memory of MbPA++, d'Autume et al., NeurIPS 2019, and RAG as practitioners use it).

1. After each task, store its training examples (all, or a reservoir of ``retrieval.size``), each
   embedded by a frozen sentence encoder (``components/retrieval.py``).
2. At test time, put each prompt's ``retrieval.k`` nearest stored examples before it.

Nothing trains, so general ability cannot change and a task can be forgotten only by being crowded
out of its neighbours. The other two modes compose the same memory with training:
``{name: seq, retrieval: {...}}`` (fine-tuning with retrieval) and ``{name: prompt_tuning,
retrieval: {...}}`` (prompt tuning with retrieval).
"""
from __future__ import annotations

from .base import Method, MethodConfig
from .components.retrieval import RetrievalConfig


class RetrievalOnlyConfig(MethodConfig):
    retrieval: RetrievalConfig = RetrievalConfig()


class Retrieval(Method):
    name = "retrieval"
    kinds = frozenset({"instruction"})
    Config = RetrievalOnlyConfig

    def before_task(self, task):
        self.learner.requires_grad_(False)

    def param_groups(self, train):
        return []
