"""Studies: sweep files with presets, pretraining and a study figure; random re-initialisation of a
checkpoint; the pretraining record in results.json; general ability on language-modelling streams."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SHARED_DATA, tiny_config
from forgetlab.config import BackboneConfig, load_pretrain_config
from forgetlab.experiment import load_config
from forgetlab.data.lm_stream import build_lm_stream
from forgetlab.data.sources import load_dataset
from forgetlab.errors import UserError
from forgetlab.models.backbones import build_backbone
from forgetlab.report.compare import write_comparison
from forgetlab.report.study import StudySpec, study_markdown, study_points
from forgetlab.report.summary import columns_for, lookup, mean_ci
from forgetlab.sweep import load_sweep
from forgetlab.train.pretrain import pretrain
from test_cli import cli
from test_lm_stream import lm_config

STUDIES = Path(__file__).resolve().parents[1] / "examples" / "studies"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A nano GPT-2-style LM pretrained for 4 steps, saved at steps 2 and 4."""
    out = tmp_path_factory.mktemp("pt")
    cfg = load_pretrain_config({
        "seed": 0, "corpus": {"name": "tinyshakespeare", "max_train_chars": 40_000},
        "tokenizer": {"vocab_size": 400}, "model": {"arch": "gpt2", "size": "nano", "seq_len": 32},
        "train": {"steps": 4, "batch_size": 4, "save_steps": [2], "eval_tokens": 256, "warmup_steps": 1}})
    return cfg, out, pretrain(cfg, out)


# -- results paths and the study's points ----------------------------------------------------------------
def test_lookup_indexes_lists_from_either_end_and_subtracts():
    results = {"retention": {"perplexity": [20.0, 25.0, 30.0]}, "nll_matrix": [[2.0, 5.0], [2.5, 3.0]],
               "baseline_nll": [6.0, 7.0]}
    assert lookup(results, "retention.perplexity.-1") == 30.0
    assert lookup(results, "retention.perplexity.0") == 20.0
    assert lookup(results, "baseline_nll.0 - nll_matrix.-1.0") == pytest.approx(6.0 - 2.5)
    assert lookup(results, "retention.perplexity.3") is None          # out of range: missing, not an error
    assert lookup(results, "nll_matrix.x") is None


def _run(name, init, params, forgetting, seed, learnt=None, ratio=None):
    return {"run_id": f"{name}-{seed}", "config": {"name": name, "seed": seed, "backbone": {"init": init}},
            "backbone": {"parameters": params}, "metrics": {"forgetting_nll": forgetting},
            "baseline_nll": [5.0], "nll_matrix": [[5.0 - (learnt or 0.0)]], "retention": {"perplexity_ratio": ratio}}


def test_study_points_are_means_and_cis_per_series_and_x():
    runs = [_run("a", "pretrained", 100, 0.10, 0), _run("a", "pretrained", 100, 0.20, 1),
            _run("a", "pretrained", 100, 0.30, 2), _run("b", "random", 100, 0.5, 0),
            _run("c", "pretrained", 1000, 0.05, 0)]
    spec = StudySpec(title="t", x="backbone.parameters", y=["metrics.forgetting_nll"], series="backbone.init")
    points = study_points(runs, spec)
    assert [(p["series"], p["x"], p["n"]) for p in points] == [("pretrained", 100, 3), ("pretrained", 1000, 1),
                                                               ("random", 100, 1)]
    mean, ci = points[0]["y"][0]
    assert mean == pytest.approx(0.2)
    # sd 0.1, t(0.975, 2) = 4.3027: half-width 4.3027 * 0.1 / sqrt(3)
    assert ci == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-5)
    assert points[1]["y"][0] == (0.05, None)
    table = study_markdown(points, spec)
    assert "| pretrained | 100 | 3 | 0.2000 ± 0.2484 |" in table


def test_learn_forget_points_are_one_per_grid_point_with_both_cis():
    runs = [_run("seq", "pretrained", 1, 0, s, learnt=1.0 + 0.2 * s, ratio=1.5 + 0.1 * s) for s in range(3)]
    runs += [_run("lora", "pretrained", 1, 0, s, learnt=0.5, ratio=1.1) for s in range(2)]
    spec = StudySpec(title="t", kind="learn_forget", x="baseline_nll.0 - nll_matrix.-1.0",
                     y=["retention.perplexity_ratio"], series="name")
    points = {p["label"]: p for p in study_points(runs, spec)}
    assert points["seq"]["x"] == pytest.approx(1.2) and points["seq"]["x_ci"] == pytest.approx(mean_ci([1.0, 1.2, 1.4])[1])
    assert points["seq"]["y"][0][0] == pytest.approx(1.6)
    assert points["lora"]["x"] == pytest.approx(0.5) and points["lora"]["x_ci"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="learn_forget plots one forgetting path"):
        StudySpec(title="t", kind="learn_forget", x="a", y=["b", "c"])


def test_comparison_with_a_study_writes_its_section_and_lm_columns(tmp_path):
    runs = [{**_run("a", "pretrained", 100, 0.1 * s, s), "perplexity_matrix": [[10.0]], "accuracy_matrix": [[0.2]],
             "tasks": ["t0"]} for s in range(2)]
    assert [t for _, t, _ in columns_for(runs)] == ["forgetting nll", "train s", "peak RSS MiB"]
    assert [t for _, t, _ in columns_for(runs + [{"accuracy_matrix": [[1.0]]}])] == ["train s", "peak RSS MiB"]
    spec = StudySpec(title="Forgetting <by> size", x="backbone.parameters", y=["metrics.forgetting_nll"])
    table = write_comparison(runs, tmp_path / "r.html", study=spec)
    page = (tmp_path / "r.html").read_text()
    assert "Study: Forgetting &lt;by&gt; size" in page and "forgetting nll" in page
    assert table.splitlines()[2].startswith("| – | 100 | 2 | 0.0500 ± ")


# -- sweep files: presets, pretraining, study ------------------------------------------------------------
def _sweep(tmp_path, **extra) -> Path:
    spec = {"name": "s", "base": tiny_config(), "grid": {"method": [{"name": "seq"}]}, "zip": {"seed": [0, 1]},
            "out": str(tmp_path / "out"), **extra}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_a_preset_overrides_the_base_the_lists_and_out(tmp_path):
    presets = {"small": {"set": {"train.epochs": 3}, "zip": {"seed": [5, 6, 7]}},
               "full": {"grid": {"method": [{"name": "seq"}, {"name": "ewc"}]}, "out": str(tmp_path / "full")}}
    path = _sweep(tmp_path, presets=presets)
    small = load_sweep(path)                                     # the first preset when none is named
    assert small.preset == "small" and [r.config.seed for r in small.runs] == [5, 6, 7]
    assert {r.config.train.epochs for r in small.runs} == {3}
    full = load_sweep(path, "full")
    assert len(full.runs) == 4 and full.out == tmp_path / "full"
    assert {r.config.train.epochs for r in full.runs} == {tiny_config()["train"]["epochs"]}
    with pytest.raises(UserError, match=r"--preset huge: unknown preset \(this sweep has small, full\)"):
        load_sweep(path, "huge")
    with pytest.raises(UserError, match="--preset small: this sweep has no presets"):
        load_sweep(_sweep(tmp_path), "small")


def test_pretrain_entries_take_the_preset_then_their_own_settings(tmp_path):
    (tmp_path / "pt.yaml").write_text(yaml.safe_dump({
        "corpus": {"name": "tinyshakespeare"}, "model": {"size": "nano"}, "train": {"steps": 10}}))
    entries = [{"config": "pt.yaml", "set": {"model.size": "tiny", "out": "runs/pt-tiny"}}]
    path = _sweep(tmp_path, pretrain=entries, presets={"small": {"pretrain_set": {"train.steps": 3, "model.size": "small"}}})
    (cfg,) = load_sweep(path).pretrain
    assert (cfg.train.steps, cfg.model.size, cfg.out) == (3, "tiny", "runs/pt-tiny")
    with pytest.raises(UserError, match=r"pretrain\[0\].set: give an out folder"):
        load_sweep(_sweep(tmp_path, pretrain=[{"config": "pt.yaml"}]))
    with pytest.raises(UserError, match=r"s.yaml: study.y: learn_forget plots one forgetting path"):
        load_sweep(_sweep(tmp_path, study={"title": "t", "kind": "learn_forget", "x": "a", "y": ["b", "c"]}))


@pytest.mark.parametrize("name", ["scale", "scale_classification", "pretraining_steps", "architecture", "data_properties", "lora_vs_full"])
def test_every_study_file_loads_in_every_preset(name):
    presets = list(yaml.safe_load((STUDIES / f"{name}.yaml").read_text())["presets"])
    assert presets[0] == "small" and "full" in presets
    for preset in presets:
        sweep = load_sweep(STUDIES / f"{name}.yaml", preset)
        assert sweep.study is not None and len(sweep.runs) >= 12
        assert len({r.label for r in sweep.runs}) * 3 <= len(sweep.runs)     # every grid point over >= 3 seeds
        outs = {str(c.out) for c in sweep.pretrain}
        names = {r.config.backbone.name for r in sweep.runs}
        # every checkpoint a run starts from is one the study pretrains (the last of its steps, or a save step)
        for n in names:
            if n.startswith("runs/studies/"):
                assert n.split("/checkpoints/")[0] in outs


# -- checkpoints as backbones: pretrained or re-initialised ---------------------------------------------
def test_a_checkpoint_records_its_step_and_a_rerun_is_skipped(checkpoint):
    cfg, out, record = checkpoint
    first = json.loads((out / "checkpoints" / "step-000002" / "forgetlab_pretraining.json").read_text())
    assert first == {"step": 2, "tokens": 2 * 4 * 32, "valid_perplexity": record["checkpoints"][0]["valid_perplexity"]}
    stamp = (out / "pretrain.json").stat().st_mtime_ns
    assert pretrain(cfg, out) == json.loads((out / "pretrain.json").read_text())
    assert (out / "pretrain.json").stat().st_mtime_ns == stamp                 # nothing retrained or rewritten


def test_random_init_keeps_the_architecture_and_tokenizer_but_not_the_weights(checkpoint):
    _, out, _ = checkpoint
    path = str(out / "checkpoints" / "step-000004")
    trained = build_backbone(BackboneConfig(name=path, max_length=32))
    torch.manual_seed(0)
    fresh = build_backbone(BackboneConfig(name=path, max_length=32, init="random"))
    torch.manual_seed(0)
    again = build_backbone(BackboneConfig(name=path, max_length=32, init="random"))
    a, b, c = (dict(m.model.named_parameters()) for m in (trained, fresh, again))
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert not torch.equal(a["wte.weight"], b["wte.weight"])
    assert all(torch.equal(b[k], c[k]) for k in b)                              # seeded: the same fresh weights
    assert fresh.tokenize(["to be or not"]) == trained.tokenize(["to be or not"])
    assert trained.describe("pretrained")["pretraining"]["step"] == 4
    assert fresh.describe("random") == {"source": path, "init": "random", "parameters": trained.n_parameters,
                                        "pretraining": {"step": 0, "tokens": 0}}
    with pytest.raises(ValueError, match="backbone.init: random re-initialises backbone.name"):
        BackboneConfig(arch="gpt2", init="random")


def test_a_run_records_its_backbone_and_general_ability_on_a_language_modelling_stream(checkpoint, tmp_path,
                                                                                   monkeypatch, capsys):
    _, out, record = checkpoint
    path = str(out / "checkpoints" / "step-000004")
    cfg = lm_config(backbone={"name": path, "arch": None},
                    eval={"retention": {"corpus": "wikitext2", "qa": None, "max_tokens": 256, "max_length": 32}})
    cfg["train"]["max_steps"] = 4
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, _, err = cli(monkeypatch, capsys, "run", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["backbone"]["pretraining"]["step"] == 4
    assert results["backbone"]["parameters"] == record["parameters"]       # the tied LM head is not counted twice
    ppl = results["retention"]["perplexity"]
    assert len(ppl) == len(results["tasks"]) + 1 and all(p > 1 for p in ppl)
    assert results["retention"]["perplexity_ratio"] == pytest.approx(ppl[-1] / ppl[0])


def test_a_labelled_data_set_in_a_sequence_is_a_corpus_of_its_texts():
    cfg = load_config(lm_config(data={"sequence": ["tinyshakespeare", "agnews"]})).data
    stream = build_lm_stream(cfg)
    agnews = load_dataset("agnews")
    task = stream.tasks[1]
    assert task.name == "agnews" and task.train_texts == [e.text for e in agnews.train]
    assert task.test_texts == [e.text for e in agnews.test]
    assert (SHARED_DATA / "cl5_textcls" / "agnews" / "train.jsonl").is_file()


def test_a_study_sweep_ends_with_its_report_figure_and_table(tmp_path, monkeypatch, capsys):
    study = {"title": "Accuracy by epochs", "kind": "line", "x": "train.epochs", "y": ["metrics.acc"]}
    path = _sweep(tmp_path, study=study, grid={"train.epochs": [1, 2]}, zip={"seed": [0]})
    code, _, err = cli(monkeypatch, capsys, "sweep", path)
    assert code == 0, err
    out = tmp_path / "out"
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Study: Accuracy by epochs" in (out / "report.html").read_text()
    accs = {json.loads(p.read_text())["config"]["train"]["epochs"]: json.loads(p.read_text())["metrics"]["acc"]
            for p in out.glob("*/results.json")}
    rows = [line for line in (out / "study.md").read_text().splitlines() if line.startswith("| – |")]
    assert rows == [f"| – | {e} | 1 | {accs[e]:.4f} |" for e in (1, 2)]


def test_class_frequency_points_pool_the_runs_with_uneven_classes():
    from forgetlab.report.compare import _class_frequency_points

    # classes 0,1 learnt in task 0 (rows: after task 0, after task 1); class 2, 3 in task 1 (no earlier row)
    tail = {"class_train_counts": [40, 10, 20, 5],
            "per_class_accuracy": [[0.9, 0.8, None, None], [0.6, 0.2, 0.7, 0.9]]}
    even = {"class_train_counts": [10, 10, 10, 10], "per_class_accuracy": tail["per_class_accuracy"]}
    points = _class_frequency_points([tail, even])
    assert [(n, round(f, 6)) for n, f in points] == [(40, 0.3), (10, 0.6)]
