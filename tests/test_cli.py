"""The CLI contract: user errors are one ``error:`` line on stderr and exit 2, nothing is recorded as
completed; a good run exits 0 and writes results.json, config.yaml, report.html and a store row."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forgetlab.cli import main
from forgetlab.errors import UserError
from forgetlab.store import Store

# Line numbers matter: tests assert that errors point at them.
CONFIG = """\
seed: 0
backbone:
  arch: gpt2
  size: nano
  max_length: 16
data:
  path: {data}
  classes_per_task: {cpt}
train:
  epochs: 1
  batch_size: 8
  progress: false
"""
LINE_DATA_PATH, LINE_EPOCHS, FIRST_EXTRA_LINE = 7, 10, 13


# -- helpers -------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def make_jsonl(folder: Path, n_classes: int = 4, n_train: int = 6, n_test: int = 2,
               test_classes: set[int] | None = None, field=None) -> Path:
    """A JSONL folder: n_classes labels c0.., n_train/n_test examples each; ``field(c, i, split)`` adds keys."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for c in range(n_classes):
                if split == "test" and test_classes is not None and c not in test_classes:
                    continue
                for i in range(n):
                    row = {"text": f"topic{c} word{c} example {i}", "label": f"c{c}"}
                    if field:
                        row.update(field(c, i, split))
                    fh.write(json.dumps(row) + "\n")
    return folder


def make_csv(folder: Path, n_classes: int = 4, n_train: int = 6, n_test: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(folder / f"{split}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["text", "label"])
            for c in range(n_classes):
                for i in range(n):
                    w.writerow([f"topic{c}, word{c} example {i}", f"class {c}"])
    return folder


def write_config(path: Path, data: str | Path, cpt: int = 2, extra: str = "", edit=None) -> Path:
    text = CONFIG.format(data=json.dumps(str(data)), cpt=cpt) + extra
    if edit:
        text = edit(text)
    path.write_text(text)
    return path


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run ``forgetlab ARGS`` in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["forgetlab", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out, err


def assert_user_error(code: int, out: str, err: str, out_dir: Path) -> str:
    """Exit 2, one ``error:`` line on stderr, no traceback, nothing recorded as completed; the message."""
    assert code == 2, (code, out, err)
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error:"), err
    assert "\x1b[" not in err
    assert out == ""
    results = out_dir / "results.json"
    if results.exists():
        assert json.loads(results.read_text()).get("status") != "completed"
    db = out_dir.parent / "forgetlab.db"
    if db.exists():
        assert Store(db).runs(status="completed") == []
    return lines[0]


def run_error(monkeypatch, capsys, tmp_path, config: Path, *extra) -> str:
    out_dir = tmp_path / "runs" / "r"
    return assert_user_error(*cli(monkeypatch, capsys, "run", config, "--out", out_dir, *extra), out_dir)


# -- 1. unknown keys -----------------------------------------------------------------------------
def test_unknown_train_key_names_key_file_line_and_suggests(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"), extra="  lrr: 0.1\n")
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "train.lrr" in msg
    assert f"exp.yaml:{FIRST_EXTRA_LINE}" in msg
    assert "'lr_head'" in msg or "'lr_backbone'" in msg
    assert "unknown key" in msg


def test_unknown_method_key_suggests_nearest(tmp_path, monkeypatch, capsys):
    extra = "method:\n  name: seq_star\n  warmpu: true\n"
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"), extra=extra)
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "method.warmpu" in msg
    assert f"exp.yaml:{FIRST_EXTRA_LINE + 2}" in msg
    assert "did you mean 'warmup'" in msg


def test_method_key_of_another_method_is_unknown(tmp_path, monkeypatch, capsys):
    # `warmup` belongs to seq_star, not to seq: the keys are checked against the chosen method
    extra = "method:\n  name: seq\n  warmup: true\n"
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"), extra=extra)
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "method.warmup" in msg and "unknown key" in msg


# -- 2. wrong type -------------------------------------------------------------------------------
def test_wrong_type_names_key_and_line(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"),
                       edit=lambda t: t.replace("epochs: 1", "epochs: two"))
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "train.epochs" in msg
    assert f"exp.yaml:{LINE_EPOCHS}" in msg
    assert "'two'" in msg


def test_invalid_yaml_names_file_and_line(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"),
                       edit=lambda t: t.replace("  epochs: 1", "  epochs: [1"))
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "exp.yaml:" in msg and "YAML" in msg


# -- 3. missing files ----------------------------------------------------------------------------
def test_missing_config_file(tmp_path, monkeypatch, capsys):
    msg = run_error(monkeypatch, capsys, tmp_path, tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg


@pytest.mark.parametrize("path", ["does/not/exist", "no[bold]such/dir"])
def test_missing_data_folder(tmp_path, monkeypatch, capsys, path):
    # the second path holds rich markup: the message must show it verbatim
    cfg = write_config(tmp_path / "exp.yaml", path)
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "data.path" in msg
    assert path in msg


def test_data_folder_without_train_split(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    cfg = write_config(tmp_path / "exp.yaml", tmp_path / "empty")
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "empty" in msg and "train.jsonl" in msg


# -- 4. malformed JSONL --------------------------------------------------------------------------
@pytest.mark.parametrize("split,line,content,expect", [
    ("train", 3, "{not json", "not valid JSON"),
    ("train", 3, json.dumps({"text": "no label here"}), "'label'"),
    ("test", 2, json.dumps({"label": "c0"}), "'text'"),
    ("train", 4, json.dumps(["text", "label"]), "JSON object"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, monkeypatch, capsys, split, line, content, expect):
    data = make_jsonl(tmp_path / "data")
    f = data / f"{split}.jsonl"
    rows = f.read_text().splitlines()
    rows[line - 1] = content
    f.write_text("\n".join(rows) + "\n")
    msg = run_error(monkeypatch, capsys, tmp_path, write_config(tmp_path / "exp.yaml", data))
    assert f"{split}.jsonl:{line}" in msg
    assert expect in msg


def test_csv_without_label_column(tmp_path, monkeypatch, capsys):
    data = make_csv(tmp_path / "data")
    f = data / "train.csv"
    f.write_text(f.read_text().replace("text,label", "text,category", 1))
    msg = run_error(monkeypatch, capsys, tmp_path, write_config(tmp_path / "exp.yaml", data))
    assert "train.csv:1" in msg and "label" in msg


# -- 5. a test label no training example has ----------------------------------------------------
def test_unseen_test_label(tmp_path, monkeypatch, capsys):
    data = make_jsonl(tmp_path / "data")
    with open(data / "test.jsonl", "a") as fh:
        fh.write(json.dumps({"text": "a stranger", "label": "zzz"}) + "\n")
    msg = run_error(monkeypatch, capsys, tmp_path, write_config(tmp_path / "exp.yaml", data))
    assert "'zzz'" in msg and "test" in msg


# -- 6. empty tasks ------------------------------------------------------------------------------
def test_domain_without_test_examples(tmp_path, monkeypatch, capsys):
    # domain "beta" has training examples but none in test.jsonl
    data = make_jsonl(tmp_path / "data", field=lambda c, i, split: {
        "domain": "alpha" if split == "test" or i % 2 == 0 else "beta"})
    extra_edit = lambda t: t.replace("  classes_per_task: 2\n",
                                     "  scenario: domain_incremental\n  task_field: domain\n  order_seed: null\n")
    cfg = write_config(tmp_path / "exp.yaml", data, edit=extra_edit)
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "'beta'" in msg and "no test examples" in msg


def test_class_task_without_test_examples(tmp_path, monkeypatch, capsys):
    # file order (order_seed: null) puts c2, c3 in task 1; neither has a test example
    data = make_jsonl(tmp_path / "data", test_classes={0, 1})
    cfg = write_config(tmp_path / "exp.yaml", data,
                       edit=lambda t: t.replace("  classes_per_task: 2\n", "  classes_per_task: 2\n  order_seed: null\n"))
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "task 1" in msg and "no test examples" in msg


def test_missing_task_field(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"),
                       edit=lambda t: t.replace("  classes_per_task: 2\n",
                                                "  scenario: domain_incremental\n  task_field: domain\n"))
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "data.task_field" in msg and "'domain'" in msg


# -- 7. classes that do not divide into tasks ----------------------------------------------------
def test_inexact_division_is_an_error(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data", n_classes=7), cpt=3)
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "data.classes_per_task" in msg
    assert "7 classes" in msg and "exact_division" in msg


def test_inexact_division_allowed_runs_with_smaller_last_task(tmp_path, monkeypatch, capsys):
    from forgetlab.experiment import load_config
    from forgetlab.data.stream import build_stream

    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data", n_classes=7, n_train=3, n_test=1),
                       cpt=3, edit=lambda t: t.replace("  classes_per_task: 3\n",
                                                       "  classes_per_task: 3\n  exact_division: false\n"))
    stream = build_stream(load_config(cfg).data)
    assert [len(t.classes) for t in stream.tasks] == [3, 3, 1]

    out_dir = tmp_path / "runs" / "r"
    code, out, err = cli(monkeypatch, capsys, "run", cfg, "--out", out_dir)
    assert code == 0, err
    raw = json.loads((out_dir / "results.json").read_text())
    assert raw["status"] == "completed"
    R = raw["accuracy_matrix"]
    assert len(R) == 3 and all(len(row) == 3 for row in R)
    assert [r["run_id"] for r in Store(out_dir.parent / "forgetlab.db").runs(status="completed")] == [raw["run_id"]]


# -- 8. bad overrides and method names -----------------------------------------------------------
@pytest.mark.parametrize("override,expect", [
    ("train.epochs=abc", ["train.epochs", "--set", "'abc'"]),
    ("train.epochs=0", ["train.epochs", "--set"]),
    ("trainepochs", ["--set", "KEY=VALUE"]),
    ("train.epochs.deep=1", ["--set", "train.epochs.deep", "not a section"]),
    ("train.lrr=0.1", ["train.lrr", "lr_"]),
    ("method.name=nope", ["method.name", "'nope'", "seq_star"]),
    ("method.name=[1, 2]", ["method.name"]),
    ("backbone=3", ["backbone", "--set"]),
])
def test_bad_override(tmp_path, monkeypatch, capsys, override, expect):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"))
    msg = run_error(monkeypatch, capsys, tmp_path, cfg, "--set", override)
    for part in expect:
        assert part in msg
    # the bad value came from --set, not from a line of the file
    assert f"exp.yaml:{LINE_EPOCHS}" not in msg


def test_unknown_method_in_file_names_its_line(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"), extra="method:\n  name: sequential\n")
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert f"exp.yaml:{FIRST_EXTRA_LINE + 1}" in msg
    assert "unknown method 'sequential'" in msg and "seq_star" in msg


def test_method_without_name(tmp_path, monkeypatch, capsys):
    cfg = write_config(tmp_path / "exp.yaml", make_jsonl(tmp_path / "data"), extra="method:\n  warmup: true\n")
    msg = run_error(monkeypatch, capsys, tmp_path, cfg)
    assert "method.name" in msg and "missing" in msg


def test_show_and_export_user_errors(tmp_path, monkeypatch, capsys):
    for args in (["show", tmp_path / "nowhere"], ["show", "--store", tmp_path / "none.db"],
                 ["export", "--store", tmp_path / "none.db"], ["export", "--store", tmp_path / "x.db", "--format", "xml"]):
        code, out, err = cli(monkeypatch, capsys, *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err


# -- end to end in a real process ----------------------------------------------------------------
def test_subprocess_user_error_exit_code_and_one_line(tmp_path):
    data = make_jsonl(tmp_path / "data")
    f = data / "train.jsonl"
    rows = f.read_text().splitlines()
    rows[2] = "{oops"
    f.write_text("\n".join(rows) + "\n")
    cfg = write_config(tmp_path / "exp.yaml", data)
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")}
    env["FORGETLAB_CACHE_DIR"] = str(tmp_path / "cache")
    out_dir = tmp_path / "runs" / "r"
    proc = subprocess.run([sys.executable, "-m", "forgetlab.cli", "run", str(cfg), "--out", str(out_dir)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:") and "train.jsonl:3" in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (out_dir / "results.json").exists()


# -- the happy path ------------------------------------------------------------------------------
def test_csv_run_show_export(tmp_path, monkeypatch, capsys):
    data = make_csv(tmp_path / "csv[v2]")     # brackets: rich markup must not eat them
    cfg = write_config(tmp_path / "exp.yaml", data)
    out_dir = tmp_path / "runs" / "good"
    code, out, err = cli(monkeypatch, capsys, "run", cfg, "--out", out_dir)
    assert code == 0, err
    assert "Traceback" not in err

    raw = json.loads((out_dir / "results.json").read_text())
    assert raw["status"] == "completed"
    assert raw["tasks"] == ["task0", "task1"]
    R = raw["accuracy_matrix"]
    assert len(R) == 2 and all(len(row) == 2 for row in R)
    assert all(0.0 <= x <= 1.0 for row in R for x in row)
    assert raw["metrics"]["acc"] == pytest.approx(sum(R[-1]) / 2, abs=1e-12)
    assert raw["run_id"] in out

    import yaml
    resolved = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert resolved["data"]["path"] == str(data)
    assert resolved["method"]["name"] == "seq"
    assert resolved["backbone"]["size"] == "nano"
    assert (out_dir / "report.html").stat().st_size > 0
    assert raw["run_id"] in (out_dir / "report.html").read_text(encoding="utf-8")

    db = out_dir.parent / "forgetlab.db"
    completed = Store(db).runs(status="completed")
    assert [r["run_id"] for r in completed] == [raw["run_id"]]
    assert completed[0]["metrics"]["acc"] == pytest.approx(raw["metrics"]["acc"], abs=1e-12)

    code, out, err = cli(monkeypatch, capsys, "show", out_dir)
    assert code == 0, err
    assert raw["run_id"] in out and "completed" in out
    assert "accuracy matrix M[i, j] (higher is better)" in out and "task1" in out
    assert "intransigence" not in out                # never measured for a single run

    code, out, err = cli(monkeypatch, capsys, "show", "--store", db)
    assert code == 0, err
    assert raw["run_id"] in out          # whole, though the table is wider than 80 columns
    assert "csv[v2]" in out and f"{raw['metrics']['acc']:.4f}" in out

    code, out, err = cli(monkeypatch, capsys, "export", "--store", db, "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 1
    assert rows[0]["run_id"] == raw["run_id"] and rows[0]["status"] == "completed"
    assert abs(float(rows[0]["acc"]) - raw["metrics"]["acc"]) <= 1e-9

    code, out, err = cli(monkeypatch, capsys, "export", "--store", db, "--format", "json")
    assert code == 0, err
    assert [r["run_id"] for r in json.loads(out)] == [raw["run_id"]]



def test_show_lists_every_matrix_of_a_run_and_of_a_store(tmp_path, monkeypatch, capsys):
    from test_report import _with_rouge

    raw = _with_rouge()
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(raw))
    code, out, err = cli(monkeypatch, capsys, "show", run)
    assert code == 0, err
    rows = [[cell.strip() for cell in line.strip("│ ").split("│")] for line in out.splitlines() if line.startswith("│")]
    assert [r for r in rows if r[0] in ("acc", "bwt", "rouge", "bwt_rouge")] == \
        [["acc", "0.7000"], ["bwt", "-0.3000"], ["rouge", "0.3750"], ["bwt_rouge", "-0.2000"]]
    assert "rouge matrix M[i, j] (higher is better)" in out and "intransigence" not in out
    assert ["before training", "0.100", "0.150"] in rows and ["t1", "0.300", "0.450"] in rows
    store = Store(tmp_path / "runs" / "forgetlab.db")
    config = {**raw["config"], "data": {"name": "d", "scenario": "s"}, "backbone": {"name": "m"}}
    store.begin(raw["run_id"], "h", config, str(run))
    store.complete(raw["run_id"], raw)
    code, out, err = cli(monkeypatch, capsys, "show", tmp_path / "runs")
    assert code == 0, err
    header = [cell.strip() for cell in next(line for line in out.splitlines() if "run_id" in line).strip("┃ ").split("┃")]
    assert header[header.index("seed") + 1:] == ["acc", "bwt", "rouge", "bwt_rouge"]


def test_bad_probe_settings_are_refused_clearly():
    from forgetlab.experiment import load_config

    with pytest.raises(UserError, match="eval.probe_type"):
        load_config({"backbone": {"arch": "gpt2"}, "data": {"name": "clinc150"}, "eval": {"probe": True, "probe_type": "mlp"}})
    with pytest.raises(UserError, match="eval.probe_epochs"):
        load_config({"backbone": {"arch": "gpt2"}, "data": {"name": "clinc150"}, "eval": {"probe_epochs": 0}})
