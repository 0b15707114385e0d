import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_DATA = ROOT / "tests" / "fixtures" / "data"        # tiny synthetic data sets: tests/fixtures/make_fixtures.py
REAL_DATA = Path(os.environ.get("FORGETLAB_DATA_DIR") or ROOT.parent / "shared" / "data")
HAS_REAL_DATA = REAL_DATA.is_dir() and any(REAL_DATA.iterdir()) and REAL_DATA.resolve() != FIXTURE_DATA.resolve()
# The data the tests read: the real data sets where there is a copy, else the fixtures in their layout.
SHARED_DATA = REAL_DATA if HAS_REAL_DATA else FIXTURE_DATA
os.environ["FORGETLAB_DATA_DIR"] = str(SHARED_DATA)
for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):     # no test reaches the network
    os.environ[_var] = "1"

NO_DATA = "needs real data"      # the start of every skip reason for want of data, counted at the end
_skipped_for_data: list[str] = []


def needs_data(name: str):
    """Skip a test whose figures are those of the real data set ``name`` (a folder of FORGETLAB_DATA_DIR)
    when there is no copy of it."""
    have = HAS_REAL_DATA and (REAL_DATA / name).is_dir()
    return pytest.mark.skipif(not have, reason=f"{NO_DATA}: FORGETLAB_DATA_DIR has no {name}")


def pytest_runtest_logreport(report):
    if report.skipped and NO_DATA in str(report.longrepr):
        _skipped_for_data.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """FORGETLAB_REQUIRE_DATA=1 (CI, which has the data): a test skipped for want of data fails the run."""
    if _skipped_for_data and os.environ.get("FORGETLAB_REQUIRE_DATA") == "1" and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    n = len(_skipped_for_data)
    line = f"{n} test{'' if n == 1 else 's'} skipped for want of real data (FORGETLAB_DATA_DIR={REAL_DATA})"
    if n and os.environ.get("FORGETLAB_REQUIRE_DATA") == "1":
        line += ": FORGETLAB_REQUIRE_DATA=1, so the run fails"
    terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session gets its own feature/data cache, never the user's."""
    monkeypatch.setenv("FORGETLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


def tiny_config(**sections) -> dict:
    """A config for a nano GPT-2-style model on a small CLINC150 stream: a run takes a few seconds."""
    cfg = {
        "seed": 0,
        "backbone": {"arch": "gpt2", "size": "nano", "max_length": 24},
        "data": {"name": "clinc150", "classes_per_task": 5, "max_tasks": 3,
                 "max_train_per_class": 8, "max_test_per_class": 4},
        "method": {"name": "seq"},
        "train": {"epochs": 1, "batch_size": 8, "lr_backbone": 1e-3, "lr_head": 1e-2, "progress": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def killed_and_resumed(cfg: dict, out, kind_cls, monkeypatch, evaluations: int) -> dict:
    """Run ``cfg`` into ``out`` and kill it when ``evaluations`` evaluations are done (the baseline is the
    first); check it is marked failed, resume it, and return the resumed run's results."""
    import json

    import forgetlab

    real, calls = kind_cls.evaluate, []

    def dies(self, method, seen, record=True):
        if len(calls) == evaluations:
            raise RuntimeError("killed")
        calls.append(1)
        return real(self, method, seen, record)

    monkeypatch.setattr(kind_cls, "evaluate", dies)
    with pytest.raises(RuntimeError):
        forgetlab.run(cfg, out=out)
    assert json.loads((out / "results.json").read_text())["status"] == "failed"
    monkeypatch.setattr(kind_cls, "evaluate", real)
    return forgetlab.run(cfg, out=out, resume=True).raw
