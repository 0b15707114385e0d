"""The suite without the real data: the fixtures are what their generator writes, tests that need the
real data skip and are counted, and FORGETLAB_REQUIRE_DATA=1 turns such a skip into a failed run."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import FIXTURE_DATA, ROOT

from forgetlab.data.sources import load_dataset
from forgetlab.errors import UserError


def files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_fixtures_are_what_the_generator_writes_and_stay_small(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "tests" / "fixtures" / "make_fixtures.py"), str(tmp_path)], check=True)
    assert files(tmp_path) == files(FIXTURE_DATA)
    assert sum(map(len, files(FIXTURE_DATA).values())) < 100_000


@pytest.mark.parametrize("require, code, tail", [(None, 0, ""), ("1", 1, ": FORGETLAB_REQUIRE_DATA=1, so the run fails")])
def test_a_skip_for_want_of_data_is_counted_and_fails_a_run_that_requires_data(tmp_path, require, code, tail):
    empty = tmp_path / "data"
    empty.mkdir()                                   # an empty folder is no copy
    env = {**os.environ, "FORGETLAB_DATA_DIR": str(empty)}
    env.pop("FORGETLAB_REQUIRE_DATA", None)
    if require:
        env["FORGETLAB_REQUIRE_DATA"] = require
    test = "tests/test_stream.py::test_clinc150_is_15_tasks_of_10_disjoint_classes"
    args = ["-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "inner"), test]
    proc = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert f"1 test skipped for want of real data (FORGETLAB_DATA_DIR={empty}){tail}\n" in proc.stdout


def test_offline_without_a_copy_or_a_mirror_fails_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLAB_DATA_DIR", str(tmp_path / "none"))
    monkeypatch.delenv("FORGETLAB_HUB_MIRROR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(UserError, match=r"^agnews: no copy in FORGETLAB_DATA_DIR \(.*none\) and the Hugging Face "
                                        r"hub is off \(HF_HUB_OFFLINE=1\)"):
        load_dataset("agnews")
    assert time.monotonic() - start < 1
