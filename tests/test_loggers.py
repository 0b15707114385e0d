"""TensorBoard and MLflow receive the per-task accuracies and the final metrics of a run."""
from __future__ import annotations

import pytest
from conftest import tiny_config

from forgetlab.api import run
from forgetlab.experiment import load_config


def test_log_section_does_not_change_a_runs_identity():
    plain = load_config(tiny_config())
    logged = load_config(tiny_config(log={"tensorboard": True, "mlflow": True}))
    assert plain.hash() == logged.hash()


def test_tensorboard_gets_each_tasks_accuracy_and_the_final_metrics(tmp_path):
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        pytest.skip("TensorBoard is not installed (pip install 'forgetlab[tensorboard]')")
    results = run(tiny_config(log={"tensorboard": True}), out=tmp_path / "run", store=tmp_path / "s.db")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    R = results.accuracy_matrix
    for j, name in enumerate(results.tasks):
        logged = [(e.step, e.value) for e in events.Scalars(f"accuracy/{name}")]
        assert logged == [(i + 1, pytest.approx(R[i, j], abs=1e-6)) for i in range(len(R))]
    seen = [e.value for e in events.Scalars("accuracy/seen_average")]
    assert seen == pytest.approx([R[i, : i + 1].mean() for i in range(len(R))], abs=1e-6)
    assert events.Scalars("metrics/acc")[0].value == pytest.approx(results.metrics["acc"], abs=1e-6)
    assert "accuracy_matrix" in events.Tags()["images"]


def test_mlflow_gets_params_per_task_metrics_and_the_matrix(tmp_path, monkeypatch):
    try:
        import mlflow
    except ImportError:
        pytest.skip("MLflow is not installed (pip install 'forgetlab[mlflow]')")
    monkeypatch.chdir(tmp_path)                          # MLflow puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    results = run(tiny_config(name="tiny-mlflow", log={"mlflow": True, "mlflow_tracking_uri": uri,
                                                        "mlflow_experiment": "t"}),
                  out=tmp_path / "run", store=tmp_path / "s.db")
    client = mlflow.tracking.MlflowClient(uri)
    [logged] = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert logged.info.run_name == "tiny-mlflow" and logged.info.status == "FINISHED"
    assert logged.data.params["method.name"] == "seq" and logged.data.params["seed"] == "0"
    R = results.accuracy_matrix
    history = client.get_metric_history(logged.info.run_id, "seen_average_acc")
    assert [(m.step, m.value) for m in history] == [(i + 1, pytest.approx(R[i, : i + 1].mean(), abs=1e-6))
                                                     for i in range(len(R))]
    assert logged.data.metrics["acc"] == pytest.approx(results.metrics["acc"])
    matrix = mlflow.artifacts.load_dict(f"{logged.info.artifact_uri}/accuracy_matrix.json")
    assert matrix["accuracy_matrix"] == results.raw["accuracy_matrix"]
