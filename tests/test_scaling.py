"""forgetlab.scaling's memory formulas against numbers worked by hand and the ZeRO paper's, its parameter
counts against built models and peft, ``forgetlab plan``, docs/scaling.md's table, the 7B example
configs and scripts/device_check.py's smoke run."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import ROOT
from forgetlab.cli import main
from forgetlab.experiment import load_config
from forgetlab.scaling import GiB, checkpointed_activations, count_parameters, lora_parameters, meta_model, \
    training_memory


def tiny_llama(**kw):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=100, **kw)


# -- the formulas ----------------------------------------------------------------------------------
def test_fp32_adamw_is_16_bytes_a_parameter():
    m = training_memory(7e9, precision="fp32")
    assert m["weights"] == m["gradients"] == pytest.approx(7e9 * 4 / GiB)
    assert m["optimizer"] == pytest.approx(7e9 * 8 / GiB)
    assert m["total"] == pytest.approx(104.31, abs=0.01)                  # 7e9 × 16 / 2^30


def test_bf16_autocast_stores_what_fp32_does():
    assert training_memory(7e9, precision="bf16") == training_memory(7e9, precision="fp32")
    assert training_memory(7e9, precision="bf16-pure")["total"] == pytest.approx(7e9 * 8 / GiB)   # 2 + 2 + 4


def test_the_zero_papers_figure_1():
    """7.5B parameters, 64 GPUs, mixed-precision Adam (2 + 2 + 12 bytes): 120, 31.4, 16.6 and 1.9 GB."""
    def gb(strategy, n=64):
        return training_memory(7.5e9, strategy=strategy, world_size=n, precision="bf16-master")["total"] * GiB / 1e9

    assert gb("zero1", 1) == pytest.approx(120.0)
    assert gb("zero1") == pytest.approx(31.4, abs=0.05)
    assert gb("zero2") == pytest.approx(16.6, abs=0.05)
    assert gb("zero3") == pytest.approx(1.9, abs=0.05)


def test_sharding_on_8_gpus():
    assert training_memory(7e9, strategy="zero3", world_size=8, precision="bf16-master")["total"] == \
        pytest.approx(13.04, abs=0.01)                                    # 16 bytes / 8
    assert training_memory(7e9, strategy="fsdp", world_size=8)["total"] == pytest.approx(13.04, abs=0.01)
    # DeepSpeed keeps its own fp32 partition beside fp32 weights: (4 + 4 + 8 + 4) / 8 bytes
    assert training_memory(7e9, strategy="zero3", world_size=8)["total"] == pytest.approx(7e9 * 20 / 8 / GiB)
    z2 = training_memory(7e9, strategy="zero2", world_size=8, precision="bf16-master")
    assert z2["weights"] == pytest.approx(7e9 * 2 / GiB)                   # replicated
    assert z2["total"] == pytest.approx(7e9 * (2 + 14 / 8) / GiB)


def test_ddp_replicates_and_keeps_buckets():
    ddp = training_memory(1e9, strategy="ddp", world_size=2)
    assert ddp["buffers"] == ddp["gradients"] == pytest.approx(4e9 / GiB)
    assert ddp["total"] == pytest.approx(20e9 / GiB)
    assert training_memory(1e9, strategy="ddp", world_size=2, bucket_view=True)["total"] == pytest.approx(16e9 / GiB)


def test_one_process_ignores_the_strategy():
    for strategy in ("ddp", "fsdp", "zero2", "zero3"):
        assert training_memory(1e9, strategy=strategy, world_size=1) == training_memory(1e9)


def test_lora_trains_the_adapters_only():
    m = training_memory(1e9 + 1e6, precision="fp32", trainable=1e6)
    assert m["weights"] == pytest.approx((1e9 + 1e6) * 4 / GiB)
    assert m["gradients"] == pytest.approx(4e6 / GiB) and m["optimizer"] == pytest.approx(8e6 / GiB)


@pytest.mark.parametrize("kw, message", [({"precision": "fp16"}, "precision"), ({"strategy": "tp"}, "strategy"),
                                         ({"world_size": 0}, "world_size"), ({"trainable": 2e9}, "trainable"),
                                         ({"strategy": "zero2", "world_size": 2, "precision": "bf16-pure"}, "master")])
def test_bad_arguments(kw, message):
    with pytest.raises(ValueError, match=message):
        training_memory(1e9, **kw)


def test_checkpointed_activations():
    assert checkpointed_activations(4096, hidden=4096, layers=32) == pytest.approx(2.0)   # 4096 × 4096 × 32 × 4 B


# -- parameter counts ------------------------------------------------------------------------------
def test_llama_2_7b_and_its_lora_counted_on_the_meta_device():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=32, vocab_size=32000)
    # 2 × 32000 × 4096 (embedding, head) + 32 × (4 × 4096² + 3 × 4096 × 11008 + 2 × 4096) + 4096 (norms)
    assert count_parameters(config) == 6_738_415_616
    model = meta_model(config)
    assert lora_parameters(model, 8) == 32 * 2 * 8 * (4096 + 4096) == 4_194_304
    assert lora_parameters(model, 16) == 8_388_608


@pytest.mark.parametrize("tied", [False, True])
def test_meta_count_equals_the_built_model(tied):
    from transformers import LlamaForCausalLM

    config = tiny_llama(tie_word_embeddings=tied)
    built = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    assert count_parameters(config) == built
    assert built == (1 if tied else 2) * 100 * 32 + 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32) + 32


@pytest.mark.parametrize("r, targets", [(8, None), (4, ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"])])
def test_lora_count_equals_peft(r, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    config = tiny_llama()
    peft_model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=r, target_modules=targets))
    assert lora_parameters(meta_model(config), r, targets) == \
        sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


# -- forgetlab plan --------------------------------------------------------------------------------
def plan(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["forgetlab", "plan", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code or 0, out, err


def write_config(tmp_path, backbone: dict, method: dict) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"backbone": backbone, "method": method,
                                    "data": {"scenario": "instruction", "sequence": ["agnews"]}}))
    return path


def test_plan_counts_a_built_backbone_and_its_lora(tmp_path, monkeypatch, capsys):
    from forgetlab.models.backbones import build_backbone

    cfg = load_config(write_config(tmp_path, {"arch": "gpt2", "size": "nano"}, {"name": "lora", "r": 4}))
    model = build_backbone(cfg.backbone).model
    total = sum(p.numel() for p in model.parameters())
    adapters = lora_parameters(model, 4)
    code, out, _ = plan(monkeypatch, capsys, tmp_path / "c.yaml", "--gpus", 4)
    assert code == 0
    assert f"{total + adapters:,} parameters, {adapters:,} trained, fp32, 4 GPU(s)" in " ".join(out.split())
    fsdp = training_memory(total + adapters, strategy="fsdp", world_size=4, trainable=adapters)
    assert f"{fsdp['total']:.2f}" in out.split("fsdp")[1].splitlines()[0]


def test_plan_needs_the_size_of_a_model_it_cannot_see(tmp_path, monkeypatch, capsys):
    write_config(tmp_path, {"name": "no-such-org/no-such-model"}, {"name": "seq"})
    code, _, err = plan(monkeypatch, capsys, tmp_path / "c.yaml")
    assert code == 2 and "--parameters" in err and "Traceback" not in err
    code, out, _ = plan(monkeypatch, capsys, tmp_path / "c.yaml", "--gpus", 8, "--parameters", 7e9)
    assert code == 0 and "13.04" in out.split("fsdp")[1].splitlines()[0]
    write_config(tmp_path, {"name": "no-such-org/no-such-model"}, {"name": "lora"})
    code, _, err = plan(monkeypatch, capsys, tmp_path / "c.yaml", "--parameters", 7e9)
    assert code == 2 and "--trainable" in err
    code, out, _ = plan(monkeypatch, capsys, tmp_path / "c.yaml", "--parameters", 7e9, "--trainable", 4e6)
    assert code == 0 and "4,000,000 trained" in " ".join(out.split())


# -- the docs and examples -------------------------------------------------------------------------
def test_the_docs_table_is_the_scripts_output():
    spec = importlib.util.spec_from_file_location("memory_table", ROOT / "scripts" / "memory_table.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    doc = (ROOT / "docs" / "scaling.md").read_text()
    assert doc[doc.index(script.BEGIN) + len(script.BEGIN):doc.index(script.END)].strip() == script.tables(), \
        "docs/scaling.md's memory table is stale: run PYTHONPATH=src python scripts/memory_table.py --write"


@pytest.mark.parametrize("name", ["instruction-7b-full", "instruction-7b-lora"])
def test_the_7b_examples_load(name):
    cfg = load_config(ROOT / "examples" / "scaling" / f"{name}.yaml")
    assert cfg.train.distributed == {"instruction-7b-full": "fsdp", "instruction-7b-lora": "ddp"}[name]
    assert cfg.data.name == "standard" and cfg.data.benchmark_order == 1 and cfg.train.precision == "bf16"


def test_device_check_smoke(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_check.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "device_check.json").read_text())
    assert report["smoke"] and [r["checkpointing"] for r in report["finetune"]] == [False, True]
    row = report["finetune"][0]
    assert row["predicted_states_gib"] == pytest.approx(training_memory(row["parameters"], precision="bf16")["total"],
                                                        abs=1e-3)
    assert all(r["tokens_per_s"] > 0 for r in report["finetune"])
    if not torch.cuda.is_available():
        assert "max_allocated_gib" not in row
