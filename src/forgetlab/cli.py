"""The ``forgetlab`` command line: run, sweep, show, export, report, pretrain, infer, bench, plan."""
from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Optional

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import distributed
from .errors import UserError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Measure, explain and reduce forgetting when fine-tuning language models on a stream of tasks.")
out = Console()


@app.command()
def run(config: Path = typer.Argument(..., help="experiment YAML"),
        set_: list[str] = typer.Option([], "--set", help="override a key: --set train.epochs=2"),
        out_dir: Optional[Path] = typer.Option(None, "--out", help="run directory (default runs/<name>-<hash>)"),
        store: Optional[Path] = typer.Option(None, "--store", help="SQLite store (default: forgetlab.db beside the run directory)"),
        resume: bool = typer.Option(False, "--resume", help="continue after the last completed task")):
    """Train through the stream; write results.json, config.yaml, report.html and a store row."""
    from .api import run as run_api
    from .config import parse_override

    overrides = dict(parse_override(s) for s in set_)
    results = run_api(config, overrides=overrides, out=out_dir, store=store, resume=resume)
    if not distributed.current().main:          # over several processes the main rank reports
        return
    _print_table(_metrics_table([results.raw], title=f"run {results.raw['run_id']}"))
    out.print(f"results: {results.run_dir / 'results.json'}")
    out.print(f"report:  {results.run_dir / 'report.html'}")


@app.command()
def show(path: Optional[Path] = typer.Argument(None, help="a run directory, or an output root holding forgetlab.db"),
         store: Optional[Path] = typer.Option(None, "--store", help="SQLite store")):
    """Print a run's metrics and matrices, or every run in a store."""
    from .report.matrices import matrices_of
    from .report.summary import metric_keys
    from .store import Store

    if path is not None and (path / "results.json").is_file():
        raw = json.loads((path / "results.json").read_text())
        _print_table(_metrics_table([raw], title=f"run {raw['run_id']} ({raw['status']})"))
        for name, m in matrices_of(raw).items():
            if m["values"]:
                _print_table(_matrix_table(m["values"], raw["tasks"],
                                           f"{name} matrix M[i, j] ({m['direction']} is better)", m["baseline"]))
        return
    db = store or (path / "forgetlab.db" if path else Path("runs/forgetlab.db"))
    if not db.is_file():
        raise UserError(f"{db}: no store here (give a run directory, or --store PATH)")
    runs = Store(db).runs()
    keys = metric_keys(runs)
    table = Table("run_id", "status", "method", "dataset", "scenario", "backbone", "seed", *keys,
                  title=escape(str(db)))
    for r in runs:
        m = r["metrics"] or {}
        table.add_row(*(escape(str(r[k])) for k in ("run_id", "status", "method", "dataset", "scenario", "backbone", "seed")),
                      *(_fmt(m.get(k)) for k in keys))
    _print_table(table)


@app.command()
def export(store: Path = typer.Option(..., "--store", help="SQLite store"),
           fmt: str = typer.Option("csv", "--format", help="csv, json or parquet (a row per run, every matrix; needs -o)"),
           group_by: list[str] = typer.Option([], "--group-by", help="write the report's group summary instead of runs"),
           where: list[str] = typer.Option([], "--where", help="only runs with KEY=VALUE (a config key), repeatable"),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="file to write (default stdout)")):
    """Export the runs of a store, or with --group-by the report's numbers (mean, 95% CI, paired tests)."""
    from .report.summary import matches, paired_tests, parse_where, records, summarize, with_intransigence
    from .store import Store

    if fmt not in ("csv", "json", "parquet"):
        raise UserError(f"--format: expected csv, json or parquet, got {fmt!r}")
    if fmt == "parquet" and (group_by or not output):
        raise UserError("--format parquet: writes the runs (not --group-by) to a file: -o runs.parquet")
    if not store.is_file():
        raise UserError(f"{store}: store not found")
    conditions = parse_where(where)
    if fmt == "parquet":
        from .report.table import write_parquet

        write_parquet([run for run in Store(store).runs(full=True) if matches(run, conditions)], output)
        return
    if not group_by:
        text = Store(store).export(fmt, keep=lambda run: matches(run, conditions))
    else:
        everything, runs = _completed(store, conditions)
        rows = summarize(with_intransigence(runs, everything), group_by)
        summary = records(rows)
        if fmt == "json":
            text = json.dumps({"group_by": group_by, "where": conditions, "groups": summary,
                               "paired_tests": paired_tests(rows)}, indent=2)
        else:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(summary[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows({**r, "seeds": " ".join(map(str, r["seeds"]))} for r in summary)
            text = buffer.getvalue()
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


def _completed(store: Path, conditions: dict) -> tuple[list[dict], list[dict]]:
    """The results of a store's completed runs, oldest first: all of them (where joint references are
    found) and those that match ``--where``."""
    from .report.summary import check_where, matches
    from .store import Store

    everything = [r["results"] for r in reversed(Store(store).completed())]
    check_where(everything, conditions)
    runs = [r for r in everything if matches(r, conditions)]
    if not runs:
        raise UserError(f"{store}: no completed runs" + (" match --where" if conditions else ""))
    return everything, runs


@app.command()
def sweep(sweep_file: Path = typer.Argument(..., help="sweep YAML: base config, grid, out"),
          executor: str = typer.Option("local", "--executor", help="local (processes on this machine) or ray"),
          address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (default: a local instance)"),
          workers: int = typer.Option(1, "--workers", help="local executor: runs at a time (each in its own process)"),
          threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                                help="CPU threads per run (default: CPUs / workers locally; on Ray the same as --cpus-per-run)"),
          cpus_per_run: Optional[int] = typer.Option(None, "--cpus-per-run", min=1,
                                                     help="ray: CPUs Ray reserves for each run, and its threads (default 1)"),
          gpus_per_run: Optional[float] = typer.Option(None, "--gpus-per-run", min=0,
                                                       help="ray: GPUs Ray reserves for each run, may be a fraction (default 0)"),
          storage: Optional[str] = typer.Option(None, "--storage",
                                                help="ray: a path every node reaches or an fsspec URI (s3://bucket/dir): "
                                                     "runs keep their checkpoints there and resume from them"),
          preset: Optional[str] = typer.Option(None, "--preset", help="a study's preset (default: its first, e.g. small)")):
    """Run every point of a grid (skipping those already completed in the sweep's store); a study first
    pretrains the models it needs and ends with its report (OUT/report.html, OUT/study.md)."""
    from .sweep import load_sweep, run_sweep
    from .train.pretrain import pretrain as run_pretrain

    spec = load_sweep(sweep_file, preset)
    if spec.preset:
        out.print(f"preset {spec.preset}")
    for cfg in spec.pretrain:
        run_pretrain(cfg)
    counts = run_sweep(spec, executor=executor, workers=workers, threads=threads, address=address,
                       cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run, storage=storage)
    out.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
              f"store {spec.out / 'forgetlab.db'}")
    if spec.study is not None:
        _study_report(spec)
    if counts["failed"]:
        raise typer.Exit(1)


def _study_report(spec) -> None:
    """The study's comparison of this sweep's completed runs: OUT/report.html, study.png and study.md."""
    from .report.compare import write_comparison
    from .store import Store

    hashes = {r.config.hash() for r in spec.runs}
    runs = [r["results"] for r in reversed(Store(spec.out / "forgetlab.db").completed()) if r["config_hash"] in hashes]
    if not runs:
        return
    table = write_comparison(runs, spec.out / "report.html", title=f"forgetlab study: {spec.study.title}",
                             study=spec.study, study_figure=spec.out / "study.png")
    (spec.out / "study.md").write_text(f"# {spec.study.title}\n\n{spec.study.question}\n\n"
                                       f"{len(runs)} runs, preset {spec.preset}.\n\n{table}")
    out.print(f"study report: {spec.out / 'report.html'} ({len(runs)} runs); figure and table: "
              f"{spec.out / 'study.png'}, {spec.out / 'study.md'}")


@app.command()
def report(run_dirs: list[Path] = typer.Argument(None, help="run directories with results.json"),
           store: Optional[Path] = typer.Option(None, "--store", help="compare the completed runs of a store"),
           group_by: list[str] = typer.Option(["name"], "--group-by",
                                              help="config key(s) that group runs (seeds and orders are averaged)"),
           where: list[str] = typer.Option([], "--where", help="only runs with KEY=VALUE (a config key), repeatable"),
           output: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML file to write"),
           markdown: Optional[Path] = typer.Option(None, "--markdown", help="also write the summary table as Markdown"),
           frontier_json: Optional[Path] = typer.Option(None, "--frontier-json",
                                                        help="also write the learn-forget frontier's points as JSON"),
           frontier_png: Optional[Path] = typer.Option(None, "--frontier-png",
                                                       help="also write the learn-forget frontier's figure as PNG")):
    """One run: (re)write its report.html. Several runs or a store: one comparison, mean ± 95% CI."""
    from .api import load
    from .report import write_report
    from .report.compare import write_comparison
    from .report.summary import matches, parse_where

    run_dirs = run_dirs or []
    if len(run_dirs) == 1 and store is None and frontier_json is None and frontier_png is None:
        results = load(run_dirs[0])
        out.print(f"report: {write_report(results.raw, output or run_dirs[0] / 'report.html')}")
        return
    conditions = parse_where(where)
    given = [load(d).raw for d in run_dirs]
    runs = [raw for raw in given if matches(raw, conditions)]
    if store is not None:
        if not store.is_file():
            raise UserError(f"{store}: store not found")
        stored, matching = _completed(store, conditions)
        given, runs = given + stored, runs + matching
    runs = list({r["run_id"]: r for r in runs}.values())     # a run given twice counts once
    if not runs:
        raise UserError("report: no completed runs (give run directories or --store DB)")
    target = output or (store.parent if store else Path(".")) / "comparison.html"
    table = write_comparison(runs, target, group_by=group_by, title=f"forgetlab: {len(runs)} runs", references=given,
                             frontier_json=frontier_json, frontier_png=frontier_png)
    if markdown:
        markdown.write_text(table)
    sys.stdout.write(table)
    out.print(f"report: {target}")


@app.command()
def pretrain(config: Path = typer.Argument(..., help="pretraining YAML: corpus, tokenizer, model, train"),
             set_: list[str] = typer.Option([], "--set", help="override a key: --set model.size=medium"),
             out_dir: Optional[Path] = typer.Option(None, "--out", help="output folder (default: the config's out)")):
    """Train a small causal LM from scratch on a corpus; safetensors checkpoints with validation perplexity."""
    from .config import load_pretrain_config, parse_override
    from .train.pretrain import pretrain as run_pretrain

    cfg = load_pretrain_config(config, dict(parse_override(s) for s in set_))
    record = run_pretrain(cfg, out_dir)
    table = Table("step", "tokens", "train loss", "valid perplexity", "checkpoint", title="pretrain checkpoints")
    for c in record["checkpoints"]:
        table.add_row(str(c["step"]), f"{c['tokens']:,}", f"{c['train_loss']:.4f}", f"{c['valid_perplexity']:.2f}",
                      escape(c["path"]))
    _print_table(table)


@app.command()
def infer(model: str = typer.Option(..., "--model", help="a causal LM: a local folder or a hub id"),
          suspect: Path = typer.Option(..., "--suspect", help="texts that may have been trained on (.jsonl or .txt)"),
          reference: Path = typer.Option(..., "--reference", help="texts known not to be (same distribution)"),
          n: Optional[int] = typer.Option(None, "--n", help="at most this many texts per side (default: all)"),
          out_dir: Path = typer.Option(Path("runs/infer"), "--out", help="folder for inference.json and report.html"),
          seed: int = typer.Option(0, "--seed", help="the sample, the splits and the perturbations"),
          repeats: int = typer.Option(1, "--repeats", min=1, help="random cross-fit splits, p-values combined"),
          join_min_chars: int = typer.Option(0, "--join-min-chars", min=0,
                                             help="join consecutive texts of a side into units of at least this many characters (0: off)"),
          ref_model: list[str] = typer.Option([], "--ref-model", help="a reference LM for ratio features, repeatable"),
          max_length: int = typer.Option(512, "--max-length", min=2, help="tokens scored per text"),
          batch_size: int = typer.Option(16, "--batch-size", min=1),
          alpha: float = typer.Option(0.05, "--alpha", help="significance level of the verdict"),
          device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
          trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="run the model repo's own code")):
    """Dataset inference: did this model train on the suspect texts? A p-value from many weak signals."""
    from .inference import infer as run_infer

    result = run_infer(model, suspect, reference, n=n, seed=seed, repeats=repeats, references=ref_model,
                       join_min_chars=join_min_chars, max_length=max_length, batch_size=batch_size, device=device, alpha=alpha,
                       trust_remote_code=trust_remote_code, out=out_dir)
    raw = result.raw
    table = Table("p-value", "effect size", "suspect units", "reference units", "verdict",
                  title=escape(f"dataset inference: {model}"))
    table.add_row(f"{raw['p_value']:.3g}", f"{raw['effect_size']:.3f}", str(raw["n"]["suspect"]),
                  str(raw["n"]["reference"]), escape(raw["verdict"]))
    _print_table(table)
    features = Table("feature", "AUC", title="single features (0.5: no signal)")
    for name, value in raw["feature_auc"].items():
        features.add_row(name, f"{value:.3f}")
    _print_table(features)
    out.print(f"results: {out_dir / 'inference.json'}")
    out.print(f"report:  {out_dir / 'report.html'}")


@app.command()
def bench(only: list[str] = typer.Option([], "--only", help="run only these benchmarks (repeatable): "
                                         "loop, frozen, mfu, methods, memory, optimisations, incumbents, decode, sft"),
          quick: bool = typer.Option(False, "--quick", help="tiny settings: checks the machinery, not the speed"),
          out_file: Path = typer.Option(Path("runs/bench.json"), "--out", help="JSON file for every figure")):
    """The performance benchmarks: each figure a ratio against a baseline measured in the same run."""
    from .bench import BENCHMARKS, run_benchmarks, summary_rows
    from .runtime import write_json

    unknown = [n for n in only if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"--only {unknown[0]}: no such benchmark (one of {', '.join(BENCHMARKS)})")
    names = [n for n in BENCHMARKS if n in only] if only else list(BENCHMARKS)
    report = run_benchmarks(names, quick, progress=lambda r: out.print(f"{r['name']}: {r['seconds']:.0f} s"))
    out_file.parent.mkdir(parents=True, exist_ok=True)
    write_json(out_file, report)
    table = Table("benchmark", "figure", "target", "met", "setting", title="forgetlab bench")
    for row in summary_rows(report):
        table.add_row(*map(escape, row))
    _print_table(table)
    out.print(f"results: {out_file}")


@app.command()
def plan(config: Path = typer.Argument(..., help="experiment YAML"),
         gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs the run is spread over"),
         parameters: Optional[float] = typer.Option(None, "--parameters",
                                                    help="the backbone's parameter count (6.74e9) when its config is not on this machine"),
         trainable: Optional[float] = typer.Option(None, "--trainable", help="parameters trained (default: LoRA's adapters, else all)")):
    """Training memory per GPU of CONFIG's backbone under each strategy: model states only, no activations.
    LoRA's adapters are counted; other methods count as full fine-tuning unless --trainable says otherwise."""
    from .experiment import load_config
    from .scaling import SHARDED, training_memory

    cfg = load_config(config)
    if parameters is None:
        parameters, counted = _backbone_counts(cfg)
        trainable = counted if trainable is None else trainable
    elif trainable is None and cfg.method["name"] == "lora":
        raise UserError("--parameters: with method lora give the adapters' size too: --trainable N "
                        "(r × (inputs + outputs) for each adapted linear layer)")
    precision = cfg.train.precision if cfg.backbone.dtype != "bfloat16" else "bf16-pure"
    chosen = {"ddp": "ddp", "fsdp": "fsdp", "deepspeed": f"zero{cfg.train.zero_stage}"}.get(cfg.train.distributed, "single")
    table = Table("strategy", "weights", "gradients", "optimizer", "master", "buffers", "total GiB",
                  title=escape(f"{config}: {parameters:,.0f} parameters, {parameters if trainable is None else trainable:,.0f} trained, "
                               f"{precision}, {gpus} GPU(s); activations not included"))
    for strategy in SHARDED:
        if strategy in ("zero1", "zero2", "zero3") and precision == "bf16-pure":
            continue
        m = training_memory(parameters, strategy=strategy, world_size=gpus, precision=precision, trainable=trainable)
        table.add_row(("one GPU" if strategy == "single" else strategy) + (" (config)" if strategy == chosen else ""),
                      *(f"{m[k]:.2f}" for k in ("weights", "gradients", "optimizer", "master", "buffers", "total")))
    _print_table(table)


def _backbone_counts(cfg) -> tuple[int, int]:
    """The backbone's parameters and those the method trains (LoRA: its adapters), built on the meta device."""
    from .models.backbones import build_backbone, is_causal_config, resolve_model_path
    from .scaling import lora_parameters, meta_model

    if cfg.backbone.name:
        from transformers import AutoConfig

        try:
            hf_cfg = AutoConfig.from_pretrained(resolve_model_path(cfg.backbone.name), local_files_only=True,
                                                revision=cfg.backbone.revision, trust_remote_code=cfg.backbone.trust_remote_code)
        except (OSError, ValueError):
            raise UserError(f"backbone.name: no config of '{cfg.backbone.name}' on this machine; "
                            f"give its size: --parameters 6.74e9") from None
        model = meta_model(hf_cfg, causal=cfg.backbone.kind == "causal_lm" or
                           (cfg.backbone.kind == "auto" and is_causal_config(hf_cfg)))
    else:
        model = build_backbone(cfg.backbone).model
    total = sum(p.numel() for p in model.parameters())
    if cfg.method["name"] != "lora":
        return total, total
    adapters = lora_parameters(model, cfg.method["r"], cfg.method["target_modules"])
    return total + adapters, adapters


def _print_table(table: Table) -> None:
    """Fitted to the window on a terminal; piped or captured (scripts read it), at its natural width, no cell cut."""
    if out.is_terminal:
        out.print(table)
    else:
        Console(file=out.file, width=max(out.width, 1000), color_system=None).print(table)


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4f}"


def _metrics_table(raws: list[dict], title: str) -> Table:
    """Every matrix's metrics, one row each (intransigence only where measured), one column per run."""
    from .report.matrices import matrices_of, ordered, split_key

    table = Table("metric", *(escape(str(r.get("run_id", ""))) for r in raws), title=escape(title))
    tables = [matrices_of(r) for r in raws]
    for name in dict.fromkeys(n for t in tables for n in t):
        per_run = [(t.get(name) or {}).get("metrics") or {} for t in tables]
        for k in ordered(dict.fromkeys(k for metrics in per_run for k in metrics)):
            values = [metrics.get(k) for metrics in per_run]
            if split_key(k)[0] != "intransigence" or any(v is not None for v in values):
                table.add_row(escape(k), *(_fmt(v) for v in values))
    return table


def _matrix_table(M: list[list[float]], tasks: list[str], title: str, baseline: list[float] | None = None) -> Table:
    """A matrix, one row per task trained through, under its baseline row if any."""
    table = Table("after \\ on", *map(escape, tasks), title=escape(title), min_width=len(title))
    rows = ([("before training", baseline)] if baseline is not None else []) + list(zip(map(escape, tasks), M))
    for name, row in rows:
        table.add_row(name, *(f"{x:.3f}" for x in row))
    return table


def main() -> None:
    """Entry point: user errors are one line on stderr and exit 2; internal errors exit 1."""
    err = Console(stderr=True)
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
