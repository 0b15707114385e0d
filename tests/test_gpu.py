"""The GPU path: a run on CUDA in bf16 with gradient checkpointing records the device's memory, and two
GPUs under DDP give one GPU's matrix. Runs only where a GPU exists (skipped elsewhere, with the reason)."""
from __future__ import annotations


import numpy as np
import pytest
import torch

import forgetlab

from conftest import tiny_config
from test_distributed import NO_DROPOUT, launch, results
from test_instruction import instruction_config

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")


@needs_gpu
def test_an_instruction_run_on_cuda_in_bf16_records_the_devices_memory(tmp_path):
    cfg = instruction_config(tmp_path, train={"device": "cuda", "precision": "bf16", "gradient_checkpointing": True})
    raw = forgetlab.run(cfg, out=tmp_path / "run").raw
    res = raw["resources"]
    assert raw["environment"]["device"].startswith("cuda")
    assert 0 < res["peak_cuda_mib"] < res["cuda_total_mib"] and res["cuda_device"] == torch.cuda.get_device_name(0)
    G = np.array(raw["matrices"]["generated"]["values"])
    assert G[0, 0] > raw["matrices"]["generated"]["baseline"][0]            # it still learns in bf16


@needs_two
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_gpus_give_the_matrix_of_one(tmp_path, strategy):
    cfg = tiny_config(backbone=NO_DROPOUT, train={"device": "cuda", "distributed": strategy})
    two = launch(cfg, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    raw, one = results(tmp_path / "two"), forgetlab.run(cfg, out=tmp_path / "one").raw
    np.testing.assert_allclose(raw["accuracy_matrix"], one["accuracy_matrix"], atol=1e-5)
    assert len(raw["resources"]["peak_cuda_mib_per_rank"]) == 2
