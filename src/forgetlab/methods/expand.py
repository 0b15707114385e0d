"""Block expansion: LLaMA Pro, "LLaMA Pro: Progressive LLaMA with Block Expansion" (Wu et al., ACL 2024).

Causal LMs with a Llama-family or GPT-2 body. The L decoder blocks are split into P = ``blocks`` groups
of near-equal size (group g ends at block ceil((g + 1) L / P) - 1; with P > L a block ends several
groups), and after the last block of each group goes a copy of it whose output projections (Llama:
``self_attn.o_proj`` and ``mlp.down_proj``; GPT-2: ``attn.c_proj`` and ``mlp.c_proj``; weights and
biases) are zero: both its branches add nothing to the residual stream, so the expanded model computes
what the model did before. Only new blocks train (and a classifier's head, at ``train.lr_head``); the
embeddings, the original blocks, the final norm and the output layer stay frozen. ``when: every_task``
grows P blocks before every task and trains only that task's, the earlier new blocks frozen like the
original ones; ``first_task`` grows P blocks once and trains them on every task (the paper's single
expansion). The first task's blocks are grown when the method is built, so the baseline is measured on
the expanded model (the same function). Every copy is of an original block, placed after the blocks its
group already gained. Each layer's ``layer_idx`` (its slot in the KV cache), ``num_hidden_layers`` and
``layer_types`` follow the insertions, so cached decoding still works. ``task_summary`` logs the
parameters added for the task and the blocks there are now; on resume, ``load_state`` grows the body
again before ``checkpoint.restore`` loads the weights.
"""
from __future__ import annotations

import copy
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..errors import UserError
from .base import Method, MethodConfig

STACKS = ("layers", "h")                  # the body's list of blocks: Llama-family, GPT-2
OUTPUTS = (("self_attn.o_proj", "mlp.down_proj"), ("attn.c_proj", "mlp.c_proj"))   # a block's two output projections


class ExpandConfig(MethodConfig):
    blocks: int = Field(2, ge=1)                             # new blocks per expansion (P groups)
    when: Literal["every_task", "first_task"] = "every_task"
    lr: float | None = Field(None, gt=0)                     # None: train.lr_backbone


def layout(layers: int, blocks: int, expansions: int) -> list[tuple[int, int, int]]:
    """The expanded body's blocks in order, each as (source block, group, expansion): original block i
    is (i, -1, -1); the new block of group g from expansion k is (the last block of group g, g, k)."""
    ends = [-(-(g + 1) * layers // blocks) - 1 for g in range(blocks)]
    order = []
    for i in range(layers):
        order.append((i, -1, -1))
        order += [(i, g, k) for g in range(blocks) if ends[g] == i for k in range(expansions)]
    return order


class Expand(Method):
    name = "expand"
    Config = ExpandConfig

    def __init__(self, cfg, learner, ctx):
        super().__init__(cfg, learner, ctx)
        backbone = learner.backbone
        if not backbone.causal:
            raise UserError(f"method.name: expand grows a causal LM's decoder; {backbone.source} is an encoder")
        self.body = backbone.model
        self.stack = next((s for s in STACKS if isinstance(getattr(self.body, s, None), nn.ModuleList)), None)
        self.original = list(getattr(self.body, self.stack)) if self.stack else []
        self.outputs = next((names for names in OUTPUTS if self.original and all(
            _has(self.original[0], n) for n in names)), None)
        if self.outputs is None or getattr(self.body.config, "is_heterogeneous", False):
            raise UserError(f"method.name: expand inserts decoder blocks into a Llama-family or GPT-2 body; "
                            f"{backbone.source} ({type(self.body).__name__}) is neither")
        self.types = getattr(self.body.config, "layer_types", None)
        self.block_at = {(i, -1, -1): block for i, block in enumerate(self.original)}
        self.expansions, self.current = 0, 0
        self.grow_to(1)                                   # the first task's blocks (the same function)

    def grow_to(self, expansions: int) -> None:
        """Insert new blocks until ``expansions`` expansions are done (nothing if they are)."""
        order = layout(len(self.original), self.cfg.blocks, expansions)
        for entry in order:
            if entry not in self.block_at:
                self.block_at[entry] = self.copy(self.original[entry[0]])
        setattr(self.body, self.stack, nn.ModuleList(self.block_at[entry] for entry in order))
        for idx, entry in enumerate(order):
            for module in self.block_at[entry].modules():
                if hasattr(module, "layer_idx"):
                    module.layer_idx = idx
        config = self.body.config
        if self.types is not None:
            config.layer_types = [self.types[source] for source, _, _ in order]
        config.num_hidden_layers = len(order)
        self.expansions = expansions

    def copy(self, block: nn.Module) -> nn.Module:
        """``block`` with its output projections zeroed: the identity through the residual stream."""
        config = self.body.config
        new = copy.deepcopy(block, memo={id(config): config})       # the copy shares the model's config
        with torch.no_grad():
            for name in self.outputs:
                projection = new.get_submodule(name)
                projection.weight.zero_()
                if getattr(projection, "bias", None) is not None:
                    projection.bias.zero_()
        return new

    def before_task(self, task):
        self.current = task.index if self.cfg.when == "every_task" else 0     # the expansion that trains
        self.grow_to(self.current + 1)
        self.learner.backbone.requires_grad_(False)
        for (_, _, k), block in self.block_at.items():
            block.requires_grad_(k == self.current)

    def param_groups(self, train):
        new = [p for p in self.learner.backbone.parameters() if p.requires_grad]
        own = [p for p in self.learner.own_parameters() if p.requires_grad]
        return [{"params": new, "lr": self.cfg.lr or train.lr_backbone}, {"params": own, "lr": train.lr_head}]

    def task_summary(self, task):
        """The parameters of the blocks grown for this task (none after the first with ``first_task``)."""
        grown = self.cfg.when == "every_task" or task.index == 0
        added = sum(p.numel() for (_, _, k), block in self.block_at.items() if grown and k == self.current
                    for p in block.parameters())
        return {**super().task_summary(task), "added_parameters": added, "blocks": len(getattr(self.body, self.stack))}

    def state(self):
        return {**super().state(), "expand.expansions": torch.tensor(self.expansions)}

    def load_state(self, state):
        """Rebuild the expanded body (checkpoint.restore calls this before it loads the weights)."""
        super().load_state(state)
        self.grow_to(int(state["expand.expansions"]))


def _has(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
    except AttributeError:
        return False
    return True
