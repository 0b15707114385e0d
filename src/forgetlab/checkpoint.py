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

from safetensors.torch import load_file, load_model, save_file, save_model

from .models.learner import Learner

if TYPE_CHECKING:
    from .methods.base import Method


def save(folder: Path, task: int, learner: Learner, method: "Method", state: dict, backbone_changed: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    previous = read_state(folder)
    backbone_file = f"backbone-{task}.safetensors"
    if not backbone_changed and previous and (folder / previous["files"]["backbone"]).is_file():
        backbone_file = previous["files"]["backbone"]
    else:
        save_model(learner.backbone, str(folder / backbone_file))
    files = {"backbone": backbone_file, "head": f"head-{task}.safetensors", "method": f"method-{task}.safetensors"}
    save_file({k: v.detach().cpu().contiguous() for k, v in learner.own_state().items()}, str(folder / files["head"]))
    save_file({k: v.detach().cpu().contiguous() for k, v in method.state().items()}, str(folder / files["method"]))
    state = {**state, "files": files, "frozen": learner.frozen_names(), "tasks_seen": learner.tasks_seen}
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, folder / "state.json")
    for f in folder.glob("*-[0-9]*.safetensors"):             # earlier tasks' files
        if f.name not in files.values():
            f.unlink()


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
