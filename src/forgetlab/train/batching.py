"""Model inputs for a set of examples (token ids or frozen features) and their batches."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.causal_lm import IGNORE_INDEX


@dataclass
class Inputs:
    """Examples as token id lists (trainable backbone) or a feature matrix (frozen backbone).

    ``labels`` is one class id per example (0 where a kind has no classes); ``targets``, where a kind
    predicts tokens, one target per token (IGNORE_INDEX where no loss is taken; the model shifts them)."""

    labels: torch.Tensor                  # [N] global class ids
    task_ids: torch.Tensor                # [N]
    example_ids: torch.Tensor             # [N] index in its task's split: (task_id, example_id) names an example
    tokens: list[list[int]] | None = None
    features: torch.Tensor | None = None
    targets: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx: torch.Tensor) -> "Inputs":
        rows = idx.tolist()
        return Inputs(self.labels[idx], self.task_ids[idx], self.example_ids[idx],
                      tokens=None if self.tokens is None else [self.tokens[i] for i in rows],
                      features=None if self.features is None else self.features[idx],
                      targets=None if self.targets is None else [self.targets[i] for i in rows])

    @staticmethod
    def concat(parts: list["Inputs"]) -> "Inputs":
        if len(parts) == 1:
            return parts[0]
        ids = [torch.cat([getattr(p, k) for p in parts]) for k in ("labels", "task_ids", "example_ids")]
        first = parts[0]
        return Inputs(*ids, tokens=None if first.tokens is None else [t for p in parts for t in p.tokens],
                      features=None if first.features is None else torch.cat([p.features for p in parts]),
                      targets=None if first.targets is None else [t for p in parts for t in p.targets])


def pad(token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence in the batch (dynamic padding)."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, : len(t)] = 1
    return ids, mask


def left_pad(token_lists: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to the longest sequence (prompts that generation or scoring continues)."""
    width = max(len(t) for t in token_lists)
    ids = torch.full((len(token_lists), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), width), dtype=torch.long)
    for i, t in enumerate(token_lists):
        if t:
            ids[i, width - len(t):] = torch.tensor(t, dtype=torch.long)
            mask[i, width - len(t):] = 1
    return ids, mask


def make_batch(inputs: Inputs, idx: torch.Tensor, pad_id: int, device: torch.device,
               pack_length: int | None = None) -> dict:
    """The examples ``idx`` as a padded batch (``pack_length``: packed into rows, see ``pack``)."""
    batch = {"labels": inputs.labels[idx].to(device), "task_ids": inputs.task_ids[idx].to(device),
             "example_ids": inputs.example_ids[idx], "index": idx}
    if pack_length and inputs.tokens is not None and inputs.targets is not None:
        rows = idx.tolist()
        packed = pack([inputs.tokens[i] for i in rows], [inputs.targets[i] for i in rows], pack_length, pad_id)
        batch.update({k: v.to(device) for k, v in packed.items()})
        return batch
    if inputs.features is not None:
        batch["features"] = inputs.features[idx].to(device)
    else:
        ids, mask = pad([inputs.tokens[i] for i in idx.tolist()], pad_id)
        batch["input_ids"], batch["attention_mask"] = ids.to(device), mask.to(device)
    if inputs.targets is not None:
        targets, _ = pad([inputs.targets[i] for i in idx.tolist()], IGNORE_INDEX)
        batch["targets"] = targets.to(device)
    return batch


def pack(tokens: list[list[int]], targets: list[list[int]], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Examples packed in order into as few rows of at most ``length`` tokens as they fit (first fit),
    with a block-diagonal causal mask [R, 1, L, L] so that no example attends to another, positions
    restarting at 0 for each example, and each example's first target ignored (unpacked, a row's first
    token is never predicted either). Padding attends to itself only."""
    rows: list[list[int]] = []
    for i, t in enumerate(tokens):
        row = next((r for r in rows if sum(len(tokens[j]) for j in r) + len(t) <= length), None)
        if row is None:
            rows.append([i])
        else:
            row.append(i)
    width = max(sum(len(tokens[j]) for j in r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    for r, members in enumerate(rows):
        start = 0
        for j in members:
            n = len(tokens[j])
            ids[r, start: start + n] = torch.tensor(tokens[j])
            labels[r, start: start + n] = torch.tensor(targets[j])
            labels[r, start] = IGNORE_INDEX
            positions[r, start: start + n] = torch.arange(n)
            segment[r, start: start + n] = j
            start += n
    same = segment[:, :, None] == segment[:, None, :]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    own = torch.eye(width, dtype=torch.bool)
    mask = ((same & (segment[:, :, None] >= 0)) | own) & causal
    return {"input_ids": ids, "attention_mask": mask[:, None], "position_ids": positions, "targets": labels}


def epoch_batches(n: int, batch_size: int, generator: torch.Generator,
                  lengths: list[int] | None = None, group: int = 8) -> list[torch.Tensor]:
    """One epoch's index batches in random order. With ``lengths``, a random permutation is cut into
    groups of ``group`` batches, each group sorted by length before it is cut into batches: batches of
    similar lengths (less padding) that are still drawn at random (as Hugging Face's ``group_by_length``)."""
    order = torch.randperm(n, generator=generator)
    if lengths is None:
        return list(order.split(batch_size))
    batches = []
    for chunk in order.split(batch_size * group):
        by_length = torch.tensor([lengths[i] for i in chunk.tolist()]).argsort(stable=True)
        batches += list(chunk[by_length].split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[torch.Tensor]:
    """Index batches of similar length, for evaluation and encoding (little padding)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [torch.tensor(order[i : i + batch_size], dtype=torch.long) for i in range(0, len(order), batch_size)]
