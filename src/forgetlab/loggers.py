"""Optional experiment trackers: TensorBoard, MLflow and Weights & Biases, each an extra, turned on in the
``log`` section.

Each receives, after every task, the accuracy on each task and the average over the tasks seen so far
(step = tasks trained), and at the end the run's metrics and its final accuracy matrix.
"""
from __future__ import annotations

import io
from pathlib import Path

from .config import LogConfig, flatten
from .errors import UserError


class TensorBoardLogger:
    """Scalars ``accuracy/<task>``, ``accuracy/seen_average``, ``train/loss`` per task; metrics and R at the end."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("log.tensorboard needs TensorBoard: pip install 'forgetlab[tensorboard]'") from None
        self.writer = SummaryWriter(str(log_dir))

    def task(self, step: int, tasks: list[str], row: list[float], loss: float) -> None:
        for name, acc in zip(tasks, row):
            self.writer.add_scalar(f"accuracy/{name}", acc, step)
        self.writer.add_scalar("accuracy/seen_average", sum(row[:step]) / step, step)
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.flush()

    def finish(self, results: dict) -> None:
        from .report.figures import heatmap_png
        import matplotlib.pyplot as plt

        step = len(results["tasks"])
        for key, value in results["metrics"].items():
            if value is not None:
                self.writer.add_scalar(f"metrics/{key}", value, step)
        png = heatmap_png(results["accuracy_matrix"], results["tasks"], "Accuracy R")
        self.writer.add_image("accuracy_matrix", plt.imread(io.BytesIO(png), format="png")[..., :3], step,
                              dataformats="HWC")
        self.writer.add_text("accuracy_matrix", _markdown_matrix(results["tasks"], results["accuracy_matrix"]), step)
        self.close()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run per forgetlab run (the same one after ``--resume``): the flattened config as params,
    per-task metrics by step, the final metrics and ``accuracy_matrix.json`` as an artifact."""

    def __init__(self, cfg: LogConfig, run_name: str, config: dict, mlflow_run_id: str | None):
        try:
            import mlflow
        except ImportError:
            raise UserError("log.mlflow needs MLflow: pip install 'forgetlab[mlflow]'") from None
        self.mlflow = mlflow
        if cfg.mlflow_tracking_uri:
            mlflow.set_tracking_uri(cfg.mlflow_tracking_uri)
        mlflow.set_experiment(cfg.mlflow_experiment)
        self.run = mlflow.start_run(run_id=mlflow_run_id, run_name=None if mlflow_run_id else run_name)
        if mlflow_run_id is None:
            mlflow.log_params({k: str(v)[:500] for k, v in flatten(config).items()})

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def task(self, step: int, tasks: list[str], row: list[float], loss: float) -> None:
        metrics = {f"acc_{_key(name)}": acc for name, acc in zip(tasks, row)}
        metrics.update(seen_average_acc=sum(row[:step]) / step, train_loss=loss)
        self.mlflow.log_metrics(metrics, step=step)

    def finish(self, results: dict) -> None:
        self.mlflow.log_metrics({k: v for k, v in results["metrics"].items() if v is not None},
                                step=len(results["tasks"]))
        self.mlflow.log_dict({"tasks": results["tasks"], "accuracy_matrix": results["accuracy_matrix"]},
                             "accuracy_matrix.json")
        self.close()

    def close(self, failed: bool = False) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


class WandbLogger:
    """One W&B run per forgetlab run (the same one after ``--resume``): the resolved config, per-task
    scalars by step as TensorBoard's, and at the end the metrics in the summary, every matrix and the
    general-ability matrix G as tables, and the report's figures as images."""

    def __init__(self, cfg: LogConfig, run_dir: Path, run_name: str, config: dict, wandb_run_id: str | None):
        try:
            import wandb
        except ImportError:
            raise UserError("log.wandb needs wandb: pip install 'forgetlab[wandb]'") from None
        self.wandb = wandb
        self.run = wandb.init(project=cfg.wandb_project, entity=cfg.wandb_entity, name=run_name, config=config,
                              id=wandb_run_id, resume="allow", mode=cfg.wandb_mode,
                              dir=str(cfg.wandb_dir or run_dir))

    @property
    def run_id(self) -> str:
        return self.run.id

    def task(self, step: int, tasks: list[str], row: list[float], loss: float) -> None:
        scalars = {f"accuracy/{name}": acc for name, acc in zip(tasks, row)}
        scalars.update({"accuracy/seen_average": sum(row[:step]) / step, "train/loss": loss})
        self.run.log(scalars, step=step)

    def finish(self, results: dict) -> None:
        try:
            self.run.summary.update({k: v for k, v in results["metrics"].items() if v is not None})
            self.run.log({**self._tables(results), **self._figures(results)}, step=len(results["tasks"]))
        finally:
            self.close()

    def _tables(self, results: dict) -> dict:
        """``matrix/<name>`` for each matrix (the baseline row first) and ``general_ability/G``."""
        tasks, Table = results["tasks"], self.wandb.Table
        tables = {}
        for name, m in results["matrices"].items():
            rows = ([["baseline", *m["baseline"]]] if m["baseline"] is not None else []) + \
                [[tasks[i], *row] for i, row in enumerate(m["values"])]
            tables[f"matrix/{name}"] = Table(columns=["after", *tasks], data=rows)
        probes = (results.get("retention") or {}).get("probes") or {}
        if probes:
            rows = [[label, *(p["values"][i] for p in probes.values())]
                    for i, label in enumerate(["baseline", *tasks])]
            tables["general_ability/G"] = Table(columns=["after", *probes], data=rows)
        return tables

    def _figures(self, results: dict) -> dict:
        """The report's figures: each matrix's heat map and task curves, each probe's general ability."""
        from PIL import Image

        from .report.figures import heatmap_png, lines_png, task_curves_png

        tasks = results["tasks"]
        pngs = {}
        for name, m in results["matrices"].items():
            pngs[f"figures/{name}_matrix"] = heatmap_png(m["values"], tasks, f"{name} matrix", m["direction"],
                                                         m["baseline"], name)
            pngs[f"figures/{name}_curves"] = task_curves_png(m["values"], tasks, name)
        for name, p in ((results.get("retention") or {}).get("probes") or {}).items():
            pngs[f"figures/general_ability_{name}"] = lines_png({name: p["values"]}, "tasks trained", name,
                                                                "general ability", ylim=None, start=0)
        return {key: self.wandb.Image(Image.open(io.BytesIO(png))) for key, png in pngs.items()}

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def open_loggers(cfg: LogConfig, run_dir: Path, run_name: str, config: dict, state: dict) -> list:
    """The trackers the config turns on; an MLflow or W&B run id is kept in ``state`` so a resume continues it."""
    loggers = []
    if cfg.tensorboard:
        # a shared tensorboard_dir gets one subfolder per run, so a sweep's runs stay apart
        log_dir = Path(cfg.tensorboard_dir) / run_dir.name if cfg.tensorboard_dir else run_dir / "tensorboard"
        loggers.append(TensorBoardLogger(log_dir))
    if cfg.mlflow:
        logger = MLflowLogger(cfg, run_name, config, state.get("mlflow_run_id"))
        state["mlflow_run_id"] = logger.run_id
        loggers.append(logger)
    if cfg.wandb:
        logger = WandbLogger(cfg, run_dir, run_name, config, state.get("wandb_run_id"))
        state["wandb_run_id"] = logger.run_id
        loggers.append(logger)
    return loggers


def _key(name: str) -> str:
    """MLflow metric names allow letters, digits, ``_-./`` and spaces."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name)



def _markdown_matrix(tasks: list[str], R: list[list[float]]) -> str:
    lines = ["| after \\ on | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    lines += [f"| {tasks[i]} | " + " | ".join(f"{x:.3f}" for x in row) + " |" for i, row in enumerate(R)]
    return "\n".join(lines)
