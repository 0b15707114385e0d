"""One run over several processes: torchrun with two CPU processes (gloo) gives the matrices of one
process with the same global batch and seed; a rank killed mid-task fails the run, which resumes in
one process to the straight run's numbers; what cannot run distributed refuses in one line."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

import forgetlab
from forgetlab import distributed
from forgetlab.distributed import Ranks

from conftest import tiny_config
from test_instruction import instruction_config

NO_DROPOUT = {"dropout": 0.0}      # dropout draws its masks per rank: equal in distribution, not bit for bit


def launch(cfg: dict, out: Path, nproc: int = 2, *extra: str) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC -m forgetlab.cli run`` on ``cfg``, one thread per process."""
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "forgetlab.cli", "run", str(config), "--out", str(out), "--store", str(out.parent / "store.db"), *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        _kill_group(proc)
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen) -> None:
    """End the launcher and its ranks (a hung test leaves no rank behind)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def assert_same_run(two: dict, one: dict) -> None:
    """The matrices (every one the kind measured, and the baselines) to 1e-5 (relative, for perplexities),
    and the losses."""
    assert two["environment"]["world_size"] == 2 and one["environment"]["world_size"] == 1
    assert two["matrices"].keys() == one["matrices"].keys()
    for name, m in one["matrices"].items():
        np.testing.assert_allclose(two["matrices"][name]["values"], m["values"], rtol=1e-5, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(two["matrices"][name]["baseline"], m["baseline"], rtol=1e-5, atol=1e-5, err_msg=name)
    # the losses: the same sums added in another order
    np.testing.assert_allclose([e["loss"] for e in two["task_log"]], [e["loss"] for e in one["task_log"]], rtol=1e-4)
    assert [e["examples"] for e in two["task_log"]] == [e["examples"] for e in one["task_log"]]


# -- the collectives, by hand, on two gloo processes ---------------------------------------------
def _collectives(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)

    class Two:                                      # what Ranks reads of an accelerator
        num_processes, process_index, device = 2, rank, torch.device("cpu")
    ranks = Ranks(Two(), "ddp")
    mapped = ranks.map(lambda part: [10 * x for x in part], list(range(5)))       # rank 0: 0, 2, 4; rank 1: 1, 3
    summed = ranks.sum([rank + 1.0, 2.0])
    # a batch of 4 rows split 3 / 1: each rank's mean is weighted count * world / total
    with ranks.sharded_step():
        scaled = ranks.global_mean(torch.tensor(1.0), 3 if rank == 0 else 1).item()
    with ranks.sharded_step(standin=rank == 1):    # rank 1 had no rows: it counts for nothing
        standin = ranks.global_mean(torch.tensor(1.0), 3 if rank == 0 else 1).item()
    outside = ranks.global_mean(torch.tensor(1.0), 3 if rank == 0 else 1).item()
    ranks.check_same("memory", {"ids": torch.tensor([1, 2])})                      # equal: no error
    try:
        ranks.check_same("memory", {"ids": torch.tensor([1, 2 + rank])})
        drift = None
    except RuntimeError as exc:
        drift = str(exc)
    queue.put((rank, mapped, summed, scaled, standin, outside, list(ranks.shard("abcde")), drift))
    dist.destroy_process_group()


def test_the_collectives_split_gather_and_weight_by_hand():
    queue = mp.get_context("spawn").SimpleQueue()
    port = 29_400 + os.getpid() % 500
    mp.start_processes(_collectives, args=(port, queue), nprocs=2, start_method="spawn")
    got = dict((r[0], r[1:]) for r in (queue.get(), queue.get()))
    for rank in (0, 1):
        mapped, summed, scaled, standin, outside, share, drift = got[rank]
        assert drift == "memory differs between rank 0 and rank 1 (ids)"         # every rank stops
        assert mapped == [0, 10, 20, 30, 40]                           # every rank gets all, in order
        assert summed == [3.0, 4.0]                                    # (1 + 2), (2 + 2)
        assert scaled == pytest.approx([1.5, 0.5][rank])               # 3 * 2 / 4 and 1 * 2 / 4: mean 1.0
        assert standin == pytest.approx([2.0, 0.0][rank])              # 3 * 2 / 3 and 0
        assert outside == 1.0                                          # no rescaling outside a training step
        assert share == [["a", "c", "e"], ["b", "d"]][rank]


def test_one_process_is_a_no_op():
    ranks = Ranks()
    assert (ranks.world, ranks.rank, ranks.main, ranks.active) == (1, 0, True, False)
    assert ranks.map(lambda part: [x + 1 for x in part], [1, 2]) == [2, 3]
    assert ranks.sum([1.5]) == [1.5] and ranks.shard([1, 2, 3]) == [1, 2, 3]
    with ranks.sharded_step():
        assert ranks.global_mean(torch.tensor(2.0), 3).item() == 2.0


# -- whole runs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_give_the_matrix_of_one_classification(tmp_path, strategy):
    # 7 examples per class: 35 per task, so each epoch ends on a batch of 3 split 2 / 1; two micro-batches a
    # step; class-incremental: each task makes its own head block trainable (FSDP: on the gathered weights)
    cfg = tiny_config(backbone=NO_DROPOUT, data={"max_train_per_class": 7},
                      train={"distributed": strategy, "grad_accum": 2, "batch_size": 4, "epochs": 2})
    two = launch(cfg, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    one = forgetlab.run(cfg, out=tmp_path / "one").raw
    assert_same_run(results(tmp_path / "two"), one)
    assert results(tmp_path / "two")["config"]["train"]["distributed"] == strategy
    assert two.stdout.count("results:") == 1                 # only the main rank reports
    res = results(tmp_path / "two")["resources"]
    assert len(res["peak_rss_mib_per_rank"]) == 2 and res["peak_rss_mib"] == max(res["peak_rss_mib_per_rank"])
    rows = sqlite3.connect(tmp_path / "store.db").execute("SELECT status FROM runs").fetchall()
    assert rows == [("completed",)]                          # one row, written by the main rank


@pytest.mark.parametrize("method", [{"name": "ewc", "fisher": "empirical", "lam": 1000.0},
                                    {"name": "replay", "replay": {"size": 10, "batch_size": 3}}],
                         ids=["ewc", "replay"])
def test_two_processes_give_the_matrix_of_one_with_a_method(tmp_path, method):
    """EWC's Fisher summed over the ranks' shares; replay's memory batch split like the batch."""
    cfg = tiny_config(backbone=NO_DROPOUT, method=method, train={"distributed": "ddp", "max_steps": 6})
    two = launch(cfg, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_run(results(tmp_path / "two"), forgetlab.run(cfg, out=tmp_path / "one").raw)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_give_the_matrices_of_one_instruction(tmp_path, strategy):
    """Generation and likelihood scoring split across the ranks and gathered (FSDP: on the weights
    gathered whole after the task), general ability's probes too; with FSDP also gradient checkpointing."""
    train = {"distributed": strategy, "epochs": 3, "gradient_checkpointing": strategy == "fsdp"}
    retention = {"corpus": "wikitext2", "max_tokens": 128, "qa": "mmlu", "max_items": 5, "gsm8k_items": 3,
                 "max_new_tokens": 4, "max_length": 64}
    cfg = instruction_config(tmp_path, backbone=NO_DROPOUT, train=train, eval={"retention": retention})
    two = launch(cfg, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    raw = results(tmp_path / "two")
    one = forgetlab.run(cfg, out=tmp_path / "one").raw
    assert_same_run(raw, one)
    for name, probe in one["retention"]["probes"].items():
        np.testing.assert_allclose(raw["retention"]["probes"][name]["values"], probe["values"], rtol=1e-5, err_msg=name)
    assert raw["predictions"][-1]["kinds"][0]["prediction"] == results(tmp_path / "one")["predictions"][-1]["kinds"][0]["prediction"]


def test_two_processes_give_the_matrices_of_one_language_modelling(tmp_path):
    cfg = {"seed": 0, "backbone": {"arch": "gpt2", "size": "nano", "max_length": 32, "dropout": 0.0},
           "data": {"scenario": "language_modeling", "sequence": ["tinyshakespeare", "wikitext2"], "order_seed": None,
                    "max_train_tokens": 2048, "max_eval_tokens": 512},
           "method": {"name": "seq"}, "train": {"distributed": "ddp", "max_steps": 4, "batch_size": 8,
                                                "lr_backbone": 1e-3, "progress": False}}
    two = launch(cfg, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_run(results(tmp_path / "two"), forgetlab.run(cfg, out=tmp_path / "one").raw)


def _rank_pids(parent: int) -> dict[int, int]:
    """The launcher's worker processes by their RANK."""
    pids = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().split()[3]) != parent:
                continue
            env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except (OSError, ValueError):
            continue
        if b"RANK" in env:
            pids[int(env[b"RANK"])] = int(pid)
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_rank_killed_mid_task_fails_the_run_and_one_process_resumes_it(tmp_path, strategy):
    """FSDP's checkpoint is the shards gathered into the files one process writes."""
    cfg = tiny_config(backbone=NO_DROPOUT, train={"distributed": strategy, "max_steps": 300, "lr_backbone": 1e-4,
                                                  "lr_head": 1e-3})
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "forgetlab.cli", "run", str(config), "--out", str(out), "--store", str(tmp_path / "store.db")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint" / "state.json").is_file() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)                                    # into the second task
        os.kill(_rank_pids(proc.pid)[1], signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        _kill_group(proc)
    failed = results(out)
    assert failed["status"] == "failed" and "RuntimeError" in failed["error"]
    assert sqlite3.connect(tmp_path / "store.db").execute("SELECT status FROM runs").fetchall() == [("failed",)]
    assert json.loads((out / "checkpoint" / "state.json").read_text())["completed"] == 1

    resumed = forgetlab.run(config, out=out, resume=True).raw               # one process, same config
    straight = forgetlab.run(cfg, out=tmp_path / "straight").raw
    assert resumed["status"] == "completed" and resumed["run_id"] == failed["run_id"]
    np.testing.assert_allclose(resumed["accuracy_matrix"], straight["accuracy_matrix"], atol=1e-5)
    assert [e["loss"] for e in resumed["task_log"]] == pytest.approx([e["loss"] for e in straight["task_log"]], rel=1e-5)


def test_what_cannot_run_distributed_refuses_in_one_line(tmp_path):
    der = launch(tiny_config(method={"name": "der++"}, train={"distributed": "ddp"}), tmp_path / "der")
    assert der.returncode != 0
    assert ("error: method.name: der++ does not run over several processes (fills its memory from each "
            "step's batch, which differs per rank); run it in one process") in der.stderr
    assert str(Path(forgetlab.__file__).parent) not in der.stderr          # no traceback from forgetlab (the launcher prints its own)


def test_the_refusals_before_a_process_group_is_made(monkeypatch):
    from forgetlab.engine import _check_distributed
    from forgetlab.errors import UserError
    from forgetlab.experiment import load_config
    from forgetlab.methods import method_class

    monkeypatch.setenv("WORLD_SIZE", "2")                                   # as a launcher sets it
    with pytest.raises(UserError, match=r"^train.distributed: 2 processes were launched; set train.distributed"):
        distributed.setup(None, "cpu")
    with pytest.raises(UserError, match=r"^train.distributed: deepspeed is not available yet; use ddp or fsdp"):
        distributed.setup("deepspeed", "cpu")
    cfg = load_config(tiny_config(method={"name": "ewc"}, train={"distributed": "fsdp"}))
    with pytest.raises(UserError, match=r"^train.distributed: fsdp shards the weights, which ewc reads or changes "
                                        r"outside the training step; use ddp, or one of joint, replay, seq$"):
        _check_distributed(cfg, method_class("ewc"))
    with pytest.raises(UserError, match=r"^online: an online stream runs in one process"):
        _check_distributed(load_config(tiny_config(online={"blurry": 0.1})), method_class("seq"))
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not distributed.setup("fsdp", "cpu").active                     # one process: whatever the config says


def test_the_strategy_is_not_part_of_a_runs_identity():
    """A run resumes at any world size: ``train.distributed`` and ``train.zero_stage`` leave the hash alone,
    and so does ``backbone.dropout`` when unset."""
    from forgetlab.experiment import load_config

    plain = load_config(tiny_config())
    assert load_config(tiny_config(train={"distributed": "ddp", "zero_stage": 3})).hash() == plain.hash()
    assert load_config(tiny_config(backbone=NO_DROPOUT)).hash() != plain.hash()


def test_fsdp_refuses_a_memory_batch_smaller_than_the_world(monkeypatch):
    """Under FSDP a forward is a collective: a rank left without memory examples would leave the others waiting."""
    from forgetlab.engine import Engine
    from forgetlab.errors import UserError
    from forgetlab.experiment import load_config

    engine = Engine(load_config(tiny_config(method={"name": "replay", "replay": {"size": 4, "batch_size": 1}})))
    engine.method.after_task(engine.stream.tasks[0])                         # the memory holds 4 examples

    class Two:
        num_processes, process_index, device = 2, 0, torch.device("cpu")
    monkeypatch.setattr(distributed, "_current", Ranks(Two(), "fsdp"))
    with pytest.raises(UserError, match=r"^replay.batch_size: with train.distributed: fsdp a memory batch needs an "
                                        r"example for each of the 2 ranks; this one has 1$"):
        engine.method.memory_batch()
    monkeypatch.setattr(distributed, "_current", Ranks(Two(), "ddp"))       # DDP: rank 0 takes the one example
    assert len(engine.method.memory_batch()["labels"]) == 1
