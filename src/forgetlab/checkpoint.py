"""Task-boundary checkpoints for ``--resume``: weights as safetensors, the rest as JSON.

Files carry the task index in their name and ``state.json`` (replaced atomically, last) names the
ones that belong together, so a run killed mid-save resumes from the previous complete checkpoint.
The backbone file is rewritten only when the backbone changed.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from .models.learner import Learner

if TYPE_CHECKING:
    from .methods.base import Method


def save(folder: Path, task: int, learner: Learner, method: "Method", state: dict, backbone_changed: bool,
         weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write the checkpoint after ``task``. ``weights``: the learner's whole state dict where the
    learner's own is not whole (FSDP's shards gathered, ``Ranks.full_state``); the files are the same."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_state(folder)
    backbone_file = f"backbone-{task}.safetensors"
    if not backbone_changed and previous and (folder / previous["files"]["backbone"]).is_file():
        backbone_file = previous["files"]["backbone"]
    elif weights is None:
        save_model(learner.backbone, str(folder / backbone_file))
    else:
        tied = _tied_copies(learner.backbone)
        save_file(_plain({k.removeprefix("backbone."): v for k, v in weights.items()
                          if k.startswith("backbone.") and k.removeprefix("backbone.") not in tied}),
                  str(folder / backbone_file))
    own = learner.own_state() if weights is None else {k: v for k, v in weights.items() if not k.startswith("backbone.")}
    files = {"backbone": backbone_file, "head": f"head-{task}.safetensors", "method": f"method-{task}.safetensors"}
    save_file(_plain(own), str(folder / files["head"]))
    save_file({k: v.detach().cpu().contiguous() for k, v in method.state().items()}, str(folder / files["method"]))
    state = {**state, "files": files, "frozen": learner.frozen_names(), "tasks_seen": learner.tasks_seen}
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / "state.json")
    for f in folder.glob("*-[0-9]*.safetensors"):             # earlier tasks' files
        if f.name not in files.values():
            f.unlink()


def _tied_copies(module: torch.nn.Module) -> set[str]:
    """The names of tied weights that ``save_model`` leaves out (of each group, all but the first sorted
    name), so that ``load_model`` reads both kinds of files alike."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {name for names in groups.values() for name in sorted(names)[1:]}


def _plain(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each tensor on the CPU, contiguous, as safetensors writes it."""
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}


def read_state(folder: Path) -> dict | None:
    f = folder / "state.json"
    return json.loads(f.read_text()) if f.is_file() else None


def restore(folder: Path, learner: Learner, method: "Method") -> dict:
    """Load the method state, then the weights, into the freshly built learner; returns the JSON state.
    The method's state comes first: it may reshape the model (``expand`` re-inserts its blocks)."""
    state = read_state(folder)
    method.load_state(load_file(str(folder / state["files"]["method"])))
    load_model(learner.backbone, str(folder / state["files"]["backbone"]))
    missing, unexpected = learner.load_state_dict(load_file(str(folder / state["files"]["head"])), strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):       # the backbone's: loaded above
        raise RuntimeError(f"{folder}: checkpoint does not match the learner ({(unexpected or missing)[0]})")
    learner.restore_frozen(state["frozen"])
    learner.tasks_seen = state["tasks_seen"]
    return state
