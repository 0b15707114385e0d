"""Reading the user's data files as text: UTF-8 only, and a file that is not is a one-line error."""
from __future__ import annotations

import io
import json
from pathlib import Path

from ..errors import UserError


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file; a byte that is not UTF-8 is a UserError naming the file, its line and
    the byte's offset in the file."""
    path = Path(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte offset {exc.start}: 0x{data[exc.start]:02x})") from None


def read_lines(path: str | Path) -> io.StringIO:
    """The lines of a UTF-8 file (``read_text``), each ending as ``open`` ends it: ``\\n`` for any newline."""
    return io.StringIO(read_text(path), newline=None)


def json_object(line: str, path: str | Path, n: int, expected: str = "a JSON object") -> dict:
    """Line ``n`` of a JSONL file as a dict; not JSON, or not an object, is one error naming file:line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise UserError(f"{path}:{n}: expected {expected}")
    return row
