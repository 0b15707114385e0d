"""What every command shares about the process: the device, the seeds, atomic JSON, the environment record."""
from __future__ import annotations

import json
import os
import platform
import random
from pathlib import Path

import numpy as np
import torch

from ._version import __version__
from .errors import UserError


def pick_device(name: str) -> torch.device:
    """``auto`` is CUDA when there is one, else the CPU; asking for CUDA without one is a user error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device: cuda was asked for but no CUDA device is available")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 autocast runs on ``device``: CPUs, and CUDA GPUs that have bf16 (Ampere on)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def write_json(path: Path, obj: dict) -> None:
    """Write through a temporary file and a rename, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def environment(seed: int, device: torch.device) -> dict:
    """Package versions, machine, device, threads and seed: what a result needs to be reproduced."""
    import transformers

    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__, "forgetlab": __version__,
            "device": str(device), "threads": torch.get_num_threads(), "seed": seed}


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux: VmHWM, which starts afresh at exec (``ru_maxrss``
    does not: a child started from a large parent reports the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024      # bytes on macOS, KiB elsewhere
