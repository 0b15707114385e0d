"""The benchmarks' machinery: that each compares like with like. Their speed figures are not tested."""
from __future__ import annotations

import json

import pytest
from test_cli import cli

from forgetlab.bench import loop, methods, mfu, sft
from forgetlab.bench.common import interleaved
from forgetlab.models.lm_families import gpt2_params


def test_interleaved_runs_each_candidate_once_per_round_in_alternating_order():
    calls = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]          # warm-up, then a b | b a | a b
    assert [len(v) for v in times.values()] == [3, 3]


def test_engine_loop_and_plain_loop_end_at_identical_weights():
    result = loop.run(quick=True, rounds=1)
    assert result["max_weight_difference"] == 0.0          # same batches, same steps: the same work
    assert result["steps"] == 5 and result["figure"] > 0


def test_sft_bench_gives_trl_forgetlabs_ids_and_batches_so_both_take_the_same_steps():
    """A 2-layer Llama of width 64 with a small BPE, 2 steps of 2 agnews instructions: the first
    step's losses agree to 1e-4, and so do the second's, since both updates are the same."""
    pytest.importorskip("trl")
    result = sft.run(tokenizer="bpe", hidden=64, layers=2, steps=2, batch_size=2, rounds=1)
    assert result["loss_equal"] and result["first_step_loss_diff"] <= 1e-4
    assert result["losses"]["forgetlab"] == pytest.approx(result["losses"]["trl"], abs=1e-4)
    assert result["max_weight_difference"] < 1e-5
    assert result["steps"] == 2 and result["trl_s_per_step"] > 0 and result["forgetlab_s_per_step"] > 0


def test_mfu_counts_the_parameters_of_the_gpt2_it_times():
    result = mfu.run(quick=True, variants=("fp32",))
    [row] = result["variants"]
    assert row["parameters"] == gpt2_params(mfu.VOCAB, 64, 64, 2)
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * 6 * row["parameters"] / (result["matmul_tflops"]["fp32"] * 1e12))
    assert 0 < row["mfu"] < row["mfu_attention"] < 1


@pytest.mark.parametrize("method, copies", [("seq", (0.0, 0.0)), ("ewc", (1.5, 2.0)), ("online_ewc", (1.5, 2.0)),
                                            ("lwf", (0.9, 1.0))])
def test_method_state_is_at_most_two_copies_of_the_parameters(method, copies):
    """EWC keeps Omega and the centre (two copies of the trainable parameters) after 2 tasks; LwF one
    teacher; seq nothing."""
    got = methods.measure(methods.setting(methods.METHODS[method], quick=True))
    assert copies[0] <= got["state_copies"] <= copies[1] + 1e-3       # + a few bytes of bookkeeping
    assert got["step_ms"] > 0 and got["peak_rss_mib"] >= got["built_rss_mib"] > 0


def test_cli_bench_writes_json_and_refuses_unknown_names(monkeypatch, capsys, tmp_path):
    code, out, err = cli(monkeypatch, capsys, "bench", "--only", "nope")
    assert code == 2 and "--only nope: no such benchmark" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(monkeypatch, capsys, "bench", "--only", "loop", "--quick", "--out", tmp_path / "b.json")
    assert code == 0, err
    report = json.loads((tmp_path / "b.json").read_text())
    assert [r["name"] for r in report["results"]] == ["loop"] and report["quick"] is True
    assert "loop" in out and "<= 1.1" in out


def test_peak_memory_of_a_child_is_its_own_not_its_parents():
    """ru_maxrss carries a parent's peak across fork and exec; the figure forgetlab records must not."""
    import subprocess
    import sys

    import numpy as np

    from forgetlab.runtime import peak_rss_mib

    ballast = np.ones(400 * 2**20 // 8)              # 400 MiB resident in this process
    parent = peak_rss_mib()
    child = float(subprocess.run([sys.executable, "-c", "from forgetlab.runtime import peak_rss_mib; print(peak_rss_mib())"],
                                 capture_output=True, text=True, check=True).stdout)
    assert parent > 400 and ballast.sum() > 0
    assert child < parent - 300
