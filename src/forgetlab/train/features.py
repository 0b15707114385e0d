"""Encoding texts with a frozen backbone, and the on-disk cache of the features it gives.

The cache is keyed by the backbone's fingerprint (its weights, pooling and max length) and, inside
that, by a hash of each text, so features are reused across tasks, runs, orders and subsets.
Shards are safetensors files written atomically.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .. import distributed
from ..models.backbones import Backbone
from .batching import length_sorted_batches, pad


def encode(backbone: Backbone, texts: list[str], batch_size: int, device: torch.device) -> torch.Tensor:
    """Features [N, dim] of the texts, in input order, computed in length-sorted batches (over several
    processes, each rank encodes its share and every rank gets them all)."""
    ranks = distributed.current()
    if not ranks.active:
        return _encode(backbone, texts, batch_size, device)
    rows = ranks.map(lambda part: list(_encode(backbone, part, batch_size, device)), texts)
    return torch.stack(rows) if rows else torch.empty(0, backbone.dim)


@torch.inference_mode()
def _encode(backbone: Backbone, texts: list[str], batch_size: int, device: torch.device) -> torch.Tensor:
    was_training = backbone.training
    backbone.eval()
    tokens = backbone.tokenize(texts)
    out = torch.empty(len(texts), backbone.dim)
    for idx in length_sorted_batches([len(t) for t in tokens], batch_size):
        ids, mask = pad([tokens[i] for i in idx.tolist()], backbone.pad_id)
        out[idx] = backbone(ids.to(device), mask.to(device)).float().cpu()
    backbone.train(was_training)
    return out


@torch.inference_mode()
def encode_layers(backbone: Backbone, texts: list[str], layers: list[int], batch_size: int,
                  device: torch.device) -> dict[int, torch.Tensor]:
    """Features [N, dim] of the texts at each of the given hidden layers, in input order."""
    was_training = backbone.training
    backbone.eval()
    tokens = backbone.tokenize(texts)
    out = {k: torch.empty(len(texts), backbone.dim) for k in layers}
    for idx in length_sorted_batches([len(t) for t in tokens], batch_size):
        ids, mask = pad([tokens[i] for i in idx.tolist()], backbone.pad_id)
        for k, feats in zip(layers, backbone.layer_features(ids.to(device), mask.to(device), layers)):
            out[k][idx] = feats.float().cpu()
    backbone.train(was_training)
    return out


def text_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


class FeatureCache:
    """Features of texts under one frozen backbone; ``root=None`` keeps them in memory only."""

    def __init__(self, root: Path | None, backbone_key: str):
        self.dir = root / backbone_key if root else None
        self.rows: dict[int, torch.Tensor] = {}
        if self.dir and self.dir.is_dir():
            for shard in sorted(self.dir.glob("*.safetensors")):
                data = load_file(shard)
                self.rows.update(zip(data["keys"].tolist(), data["features"]))

    def get(self, backbone: Backbone, texts: list[str], batch_size: int, device: torch.device) -> torch.Tensor:
        """Features of ``texts``: cached ones looked up, the others encoded once and stored."""
        keys = [text_key(t) for t in texts]
        missing: dict[int, str] = {}
        for k, t in zip(keys, texts):
            if k not in self.rows:
                missing.setdefault(k, t)
        if missing:
            feats = encode(backbone, list(missing.values()), batch_size, device)
            self.rows.update(zip(missing.keys(), feats))
            self._save(torch.tensor(list(missing.keys()), dtype=torch.long), feats)
        return torch.stack([self.rows[k] for k in keys]) if keys else torch.empty(0, backbone.dim)

    def _save(self, keys: torch.Tensor, feats: torch.Tensor) -> None:
        if self.dir is None or not distributed.current().main:      # one writer per run
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp = self.dir / f".{name}.tmp"
        save_file({"keys": keys, "features": feats.contiguous()}, str(tmp))
        os.replace(tmp, self.dir / f"{name}.safetensors")
