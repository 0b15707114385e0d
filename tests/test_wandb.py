"""Weights & Biases, offline: the per-task scalars, the summary, every matrix and G as tables, and the
figures of a run, read back from the W&B run directory; a resume continues the same W&B run."""
from __future__ import annotations

import json
import struct

import pytest
from test_instruction import instruction_config

import forgetlab

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'forgetlab[wandb]')")

RETENTION = {"corpus": "wikitext2", "max_tokens": 128, "qa": "mmlu", "max_items": 4, "max_length": 64}


def wandb_records(path) -> list:
    """The records of a ``.wandb`` file: a 7-byte header, then LevelDB's log format (32 KiB blocks,
    each record in chunks with a 7-byte header: checksum, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, records, pending, pos = path.read_bytes(), [], b"", 7
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0:                                  # the padding at a block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pb.Record.FromString(pending))
    return records


def read_run(run_dir) -> dict:
    """A W&B offline run's id, name, history rows by step, summary and exit code, and its table files
    (after the W&B service is shut down: ``finish`` may return before it has written the last records)."""
    wandb.teardown()
    [offline] = run_dir.glob("wandb/offline-run-*")
    [path] = offline.glob("*.wandb")
    out = {"history": {}, "summary": {}, "tables": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["id"], out["name"] = record.run.run_id, record.run.display_name
        elif kind == "history":
            row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            out["history"][row["_step"]] = row
        elif kind == "summary":
            out["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.summary.update})
        elif kind == "exit":
            out["exit_code"] = record.exit.exit_code
    for table in offline.glob("files/media/table/**/*.table.json"):
        out["tables"][table.name] = json.loads(table.read_text())
    out["images"] = sorted(p.name for p in offline.glob("files/media/images/**/*.png"))
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """No network: offline, silent, every W&B folder in a temporary one and an address nothing answers."""
    home = tmp_path_factory.mktemp("wandb-home")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(home),
                            "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"),
                            "WANDB_CONFIG_DIR": str(home / "config"), "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
                            "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                            "WANDB_BASE_URL": "http://127.0.0.1:9"}.items():
            mp.setenv(name, value)
        yield home


@pytest.fixture(scope="module")
def logged(env, tmp_path_factory):
    """An instruction run (two matrices, generated and likelihood, and G) logged to W&B offline."""
    tmp = tmp_path_factory.mktemp("run")
    cfg = {**instruction_config(tmp, train={"epochs": 1}, eval={"retention": RETENTION},
                                log={"wandb": True, "wandb_mode": "offline"}), "name": "tiny-wandb"}
    raw = forgetlab.run(cfg, out=tmp / "run", store=tmp / "s.db").raw
    return raw, read_run(tmp / "run")


def test_each_tasks_scalars_at_step_tasks_trained(logged):
    raw, wb = logged
    R, tasks = raw["matrices"]["generated"]["values"], raw["tasks"]   # the primary matrix, as TensorBoard's
    assert wb["name"] == "tiny-wandb" and wb["exit_code"] == 0
    for i, row in enumerate(R):
        step = wb["history"][i + 1]
        assert [step[f"accuracy/{t}"] for t in tasks] == pytest.approx(row, abs=1e-12)
        assert step["accuracy/seen_average"] == pytest.approx(sum(row[: i + 1]) / (i + 1))
        assert step["train/loss"] == pytest.approx(raw["task_log"][i]["loss"])
    for key, value in raw["metrics"].items():
        if value is not None:
            assert wb["summary"][key] == pytest.approx(value)


def test_every_matrix_and_g_as_tables_and_the_figures_as_images(logged):
    raw, wb = logged
    tasks = raw["tasks"]
    assert {"matrices", "retention"} <= set(raw) and len(raw["matrices"]) == 2
    tables = {name.rsplit("_", 2)[0]: t for name, t in wb["tables"].items()}   # <key>_<step>_<hash>.table.json
    for name, m in raw["matrices"].items():
        table = tables[f"{name}"]
        assert table["columns"] == ["after", *tasks]
        assert table["data"] == [["baseline", *m["baseline"]]] + [[t, *row] for t, row in zip(tasks, m["values"])]
    probes = raw["retention"]["probes"]
    G = tables["G"]
    assert G["columns"] == ["after", *probes]
    assert [row[1:] for row in G["data"]] == [[p["values"][i] for p in probes.values()] for i in range(len(tasks) + 1)]
    names = " ".join(wb["images"])
    for name in raw["matrices"]:
        assert f"{name}_matrix" in names and f"{name}_curves" in names
    assert all(f"general_ability_{p}" in names for p in probes)


def test_a_resume_continues_the_same_wandb_run_and_a_failure_exits_1(env, tmp_path, monkeypatch):
    from conftest import tiny_config

    from forgetlab.kinds.classification import Classification

    cfg = tiny_config(log={"wandb": True, "wandb_mode": "offline"})
    real = Classification.evaluate
    calls = []

    def dies(self, method, seen, record=True):
        if len(calls) == 2:                              # the baseline and the first task, then killed
            raise RuntimeError("killed")
        calls.append(1)
        return real(self, method, seen, record)

    monkeypatch.setattr(Classification, "evaluate", dies)
    with pytest.raises(RuntimeError):
        forgetlab.run(cfg, out=tmp_path / "run", store=tmp_path / "s.db")
    failed = read_run(tmp_path / "run")
    assert failed["exit_code"] == 1 and list(failed["history"]) == [1]
    for path in (tmp_path / "run").glob("wandb/offline-run-*"):
        path.rename(tmp_path / f"first-{path.name}")
    monkeypatch.setattr(Classification, "evaluate", real)
    forgetlab.run(cfg, out=tmp_path / "run", store=tmp_path / "s.db", resume=True)
    resumed = read_run(tmp_path / "run")
    assert resumed["id"] == failed["id"] and resumed["exit_code"] == 0
    assert sorted(resumed["history"]) == [2, 3]


def test_the_wandb_keys_do_not_change_a_runs_identity_and_a_missing_wandb_is_one_line(tmp_path, monkeypatch):
    from conftest import tiny_config

    from forgetlab.errors import UserError
    from forgetlab.experiment import load_config
    from forgetlab.loggers import open_loggers

    logged = load_config(tiny_config(log={"wandb": True, "wandb_project": "p", "wandb_mode": "disabled"}))
    assert logged.hash() == load_config(tiny_config()).hash()
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    with pytest.raises(UserError, match=r"^log.wandb needs wandb: pip install 'forgetlab\[wandb\]'$"):
        open_loggers(logged.log, tmp_path, "r", logged.to_dict(), {})
