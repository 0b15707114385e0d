"""Reading the user's data files as text: UTF-8 only, and a file that is not is a one-line error."""
from __future__ import annotations

import io
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
