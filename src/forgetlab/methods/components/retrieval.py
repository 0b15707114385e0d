"""A retrieval memory: stored training examples of the tasks seen, searched by sentence embedding,
the k nearest put into a test prompt as demonstrations (RAG as practitioners use it; the episodic
memory of MbPA++, "Episodic Memory in Lifelong Language Learning", d'Autume et al., NeurIPS 2019,
without its local adaptation step).

Any method composes it on an instruction stream (``method: {name: seq, retrieval: {k: 2}}``, as a
replay memory composes); the ``retrieval`` method is the frozen model with it alone.

- After each task its training examples are stored: all of them (``size: null``) or a reservoir of
  ``size`` over the stream (``components/memory.py``). Each is embedded once by a frozen sentence
  encoder (all-MiniLM-L6-v2 by default, mean-pooled) from its prompt; the model being trained never
  embeds, so stored keys never go stale.
- A test prompt is embedded the same way; its ``k`` nearest stored examples (cosine, exact search:
  ``components/index.py``) become demonstrations. Each is its prompt's first ``demo_words`` words
  and its response in ``demo_template``; they precede the question, nearest last, each followed by
  ``separator``:  ``demo_k ⏎⏎ … demo_1 ⏎⏎ prompt``. Where the window is short, the farthest are
  dropped whole until the prompt fits (the kind does this, ``kinds/instruction.py``).
- General ability (``eval.retention``) is measured without demonstrations: it is the model's own.
- The answers a run keeps (results.json ``predictions``) carry their demonstrations (200 characters
  each); the report shows them before the prompt.
- Cost: entries, the index's size and the mean time per query (embedding + search) land in
  ``task_log[i].method`` after every task.
"""
from __future__ import annotations

import time

import torch
from pydantic import Field

from ...config import BackboneConfig, Section
from ...data.instructions import Instruction
from ...models.backbones import build_backbone
from .index import VectorIndex
from .memory import Memory

SENTENCE_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"


class RetrievalConfig(Section):
    k: int = Field(2, ge=0)                         # demonstrations per prompt (0: none)
    size: int | None = Field(None, ge=1)            # examples kept (None: every training example seen)
    encoder: BackboneConfig = BackboneConfig(name=SENTENCE_ENCODER, pooling="mean", max_length=128)
    demo_words: int = Field(40, ge=1)               # a demonstration's prompt is cut to its first this many words
    demo_template: str = "{prompt}\nAnswer: {response}"
    separator: str = "\n\n"
    variants: list[int] = []                        # further k evaluated after each task (e.g. [0]: no retrieval)


class RetrievalMemory:
    """The stored examples, their embeddings and the index over them."""

    def __init__(self, cfg: RetrievalConfig, stream, device: torch.device):
        self.cfg, self.stream, self.device = cfg, stream, device
        self.k = cfg.k
        self.encoder = build_backbone(cfg.encoder).to(device).eval().requires_grad_(False)
        self.index = VectorIndex(self.encoder.dim, "cosine")
        self.reservoir = Memory(cfg.size) if cfg.size else None
        self.task_ids = torch.zeros(0, dtype=torch.long)       # the stored examples, row by row
        self.example_ids = torch.zeros(0, dtype=torch.long)
        self._embedded: dict[tuple[int, int], torch.Tensor] = {}
        self.queries, self.query_s = 0, 0.0                    # since the last ``cost()``

    def __len__(self) -> int:
        return len(self.index)

    @torch.no_grad()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """Sentence embeddings [N, dim] of the texts (the encoder's pooled features, float32, CPU)."""
        out = []
        for start in range(0, len(texts), 64):
            ids = [torch.tensor(t) for t in self.encoder.tokenize(texts[start: start + 64])]
            batch = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=self.encoder.pad_id)
            mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(t), dtype=torch.long) for t in ids], batch_first=True)
            out.append(self.encoder(batch.to(self.device), mask.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.encoder.dim)

    def example(self, task_id: int, example_id: int) -> Instruction:
        return self.stream.tasks[task_id].train_examples[example_id]

    def add(self, task) -> None:
        """Store the task's training examples (all, or offered to the reservoir in a random order)."""
        n = len(task.train_examples)
        if self.reservoir is None:
            self.task_ids = torch.cat([self.task_ids, torch.full((n,), task.index)])
            self.example_ids = torch.cat([self.example_ids, torch.arange(n)])
        else:
            order = torch.randperm(n)
            self.reservoir.add(torch.full((n,), task.index), order, torch.zeros(n, dtype=torch.long))
            self.task_ids, self.example_ids = self.reservoir.task_ids, self.reservoir.example_ids
        missing = [(t, e) for t, e in zip(self.task_ids.tolist(), self.example_ids.tolist()) if (t, e) not in self._embedded]
        for key, vector in zip(missing, self.embed([self.example(t, e).prompt for t, e in missing])):
            self._embedded[key] = vector
        rows = list(zip(self.task_ids.tolist(), self.example_ids.tolist()))
        self._embedded = {key: self._embedded[key] for key in rows}       # forget what the reservoir dropped
        keys = torch.stack([self._embedded[key] for key in rows]) if rows else torch.zeros(0, self.encoder.dim)
        self.index.replace(keys, torch.arange(len(rows)))

    def demonstrations(self, examples: list[Instruction]) -> list[list[str]]:
        """For each example, its ``k`` nearest stored examples rendered as demonstrations, nearest first."""
        if self.k == 0 or not len(self.index) or not examples:
            return [[] for _ in examples]
        start = time.perf_counter()
        rows = self.index.search(self.embed([ex.prompt for ex in examples]), self.k)
        self.query_s += time.perf_counter() - start
        self.queries += len(examples)
        return [[self.render(self.example(int(self.task_ids[r]), int(self.example_ids[r]))) for r in row.tolist()]
                for row in rows]

    def render(self, example: Instruction) -> str:
        """A stored example as a demonstration: its prompt's first ``demo_words`` words (whitespace kept
        where nothing is cut) and its response, in ``demo_template``."""
        words = example.prompt.split()
        head = example.prompt if len(words) <= self.cfg.demo_words else " ".join(words[: self.cfg.demo_words])
        return self.cfg.demo_template.replace("{prompt}", head).replace("{response}", example.response)

    def assemble(self, demonstrations: list[str], prompt: str) -> str:
        """The prompt with its demonstrations before it, nearest last (next to the question)."""
        return "".join(d + self.cfg.separator for d in reversed(demonstrations)) + prompt

    def cost(self) -> dict:
        """Entries, index size and the mean time per query since the last call."""
        out = {"retrieval_entries": len(self.index), "retrieval_index_mib": self.index.nbytes / 2**20,
               "retrieval_query_ms": 1e3 * self.query_s / self.queries if self.queries else None}
        self.queries, self.query_s = 0, 0.0
        return out

    # -- resume ------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        rows = (self.reservoir.state("retrieval.reservoir.") if self.reservoir is not None else
                {"retrieval.task_ids": self.task_ids, "retrieval.example_ids": self.example_ids})
        return rows | self.index.state("retrieval.")

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.reservoir is not None:
            self.reservoir.load_state(state, "retrieval.reservoir.")
            self.task_ids, self.example_ids = self.reservoir.task_ids, self.reservoir.example_ids
        else:
            self.task_ids, self.example_ids = state["retrieval.task_ids"], state["retrieval.example_ids"]
        self.index.load_state(state, "retrieval.")
        self._embedded = dict(zip(zip(self.task_ids.tolist(), self.example_ids.tolist()), self.index.keys))
