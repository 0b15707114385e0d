"""A user's data file that is not UTF-8: one line naming the file, its line and the byte's offset, exit 2."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_config

from forgetlab.config import CorpusConfig, DataConfig
from forgetlab.data.corpus import corpus_splits, read_texts
from forgetlab.data.lm_stream import build_lm_stream
from forgetlab.data.sources import load_dataset
from forgetlab.errors import UserError
from forgetlab.eval.retention import corpus_texts, qa_items

GOOD = '{"text": "wake me at 7", "label": "alarm"}\n'


def write_with_bad_byte(path, before: str, after: str) -> tuple[int, int]:
    """``before``, the byte 0xff, ``after``; returns (line, byte offset) of the bad byte."""
    head = before.encode("utf-8")
    path.write_bytes(head + b"\xff" + after.encode("utf-8"))
    return head.count(b"\n") + 1, len(head)


def test_cli_run_on_a_data_set_that_is_not_utf8_is_one_line_exit_2(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text(GOOD + GOOD.replace("alarm", "timer"))
    # line 3 is '{"text": "caf\xff"...': the bad byte sits 2 lines of GOOD plus 13 characters into the file
    line, offset = write_with_bad_byte(data / "train.jsonl", GOOD * 2 + '{"text": "caf', '", "label": "timer"}\n')
    assert (line, offset) == (3, 2 * len(GOOD) + 13)
    cfg = tiny_config(data={"name": None, "path": str(data), "classes_per_task": 1, "max_tasks": None})
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "forgetlab.cli", "run", str(tmp_path / "exp.yaml"),
                           "--out", str(tmp_path / "runs" / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"{data / 'train.jsonl'}:3: not UTF-8 text (byte offset {offset}: 0xff)" in proc.stderr


def _qa_line(answer: str = "A") -> str:
    return json.dumps({"question": "What is 1 + 1?", "choices": ["2", "3", "4", "5"], "answer": answer}) + "\n"


# Every reader of a user's data file: (file name, text before the bad byte, text after it, the read).
READERS = {
    "data set JSONL": ("d.jsonl", GOOD * 3 + '{"text": "', 'x", "label": "alarm"}\n',
                       lambda p: load_dataset(path=str(p))),
    "data set CSV": ("d.csv", "text,label\nwake me,alarm\nca", "fe,timer\n", lambda p: load_dataset(path=str(p))),
    "texts .txt": ("t.txt", "one text\nanother\n", "\n", read_texts),
    "texts .jsonl": ("t.jsonl", '{"text": "one"}\n{"text": "tw', 'o"}\n', read_texts),
    "corpus .txt": ("c.txt", "a corpus\nof lines\n", "more\n", lambda p: corpus_splits(CorpusConfig(path=str(p)), 0)),
    "books": ("b.txt", "[Emma by Jane Austen 1816]\nEmma Woodhouse, ", "handsome\n",
              lambda p: build_lm_stream(DataConfig(scenario="language_modeling", path=str(p)))),
    "retention corpus": ("r.txt", "general text\n", "\n", lambda p: corpus_texts(str(p), 1000)),
    "retention QA": ("q.jsonl", _qa_line() * 2, _qa_line(), lambda p: qa_items(str(p), "val", 1)),
}


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_of_user_data_names_the_file_line_and_byte(tmp_path, reader):
    name, before, after, read = READERS[reader]
    path = tmp_path / name
    line, offset = write_with_bad_byte(path, before, after)
    with pytest.raises(UserError) as info:
        read(path)
    assert f"{path}:{line}: not UTF-8 text (byte offset {offset}: 0xff)" in str(info.value)
    assert len(str(info.value).splitlines()) == 1
