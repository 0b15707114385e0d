"""Run storage for sweeps on a cluster: a folder every node reaches (a shared path or an fsspec URI such
as ``s3://bucket/forgetlab``). Under ``LOCATION/<run dir name>/`` it holds a running run's checkpoint
(``checkpoint/``, mirrored after every task boundary) and, once the run completed, its run directory
(``results.json`` last). A retried or re-submitted run resumes from the checkpoint on whatever node it
lands, and one that finished but was never recorded is picked up rather than run again.

``checkpoint/state.json`` names the files of one checkpoint (checkpoint.py); it is uploaded after them
(to a temporary name, then moved) and the files it no longer names are removed after it, so storage
always holds a complete checkpoint.
"""
from __future__ import annotations

import json
import posixpath
import re
import threading
from pathlib import Path

from ..errors import UserError

STATE = "state.json"
TASK_FILE = re.compile(r".*-[0-9]+\.safetensors$")     # a checkpoint's per-task files (checkpoint.py)


def absolute(location: str) -> str:
    """A plain path made absolute (the runs' tasks work elsewhere); a URI as it is."""
    return location if "://" in location else str(Path(location).expanduser().resolve())


def open_storage(location: str):
    """The fsspec filesystem and root path of ``location``."""
    from fsspec.core import url_to_fs

    location = absolute(location)
    try:
        fs, root = url_to_fs(location)
        fs.makedirs(root, exist_ok=True)
    except ImportError as exc:                      # fsspec names the package: "Install s3fs to access S3"
        raise UserError(f"--storage {location}: {exc}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"--storage {location}: cannot write there ({type(exc).__name__}: {exc})") from None
    return fs, root.rstrip("/")


class RunStorage:
    """One run's folder in storage: ``LOCATION/<name>/``."""

    def __init__(self, location: str, name: str):
        self.fs, root = open_storage(location)
        self.root = posixpath.join(root, name)
        self.ckpt = posixpath.join(self.root, "checkpoint")
        self.sent: set[str] = set()                 # checkpoint files already in storage (their names never change)

    # -- a finished run ----------------------------------------------------------------------
    def completed(self) -> bool:
        """Whether storage holds this run's completed run directory."""
        results = self._read(posixpath.join(self.root, "results.json"))
        return results is not None and json.loads(results).get("status") == "completed"

    def download_run(self, run_dir: Path) -> None:
        """The stored run directory, its checkpoint aside."""
        for path in self._files(self.root):
            rel = posixpath.relpath(path, self.root)
            if rel.split("/")[0] != "checkpoint":
                self._get(path, run_dir / rel)

    def upload_run(self, run_dir: Path) -> None:
        """The finished run directory (not its checkpoint), ``results.json`` last; then the stored
        checkpoint goes."""
        files = [p for p in sorted(run_dir.rglob("*")) if p.is_file() and "checkpoint" not in p.relative_to(run_dir).parts]
        for p in sorted(files, key=lambda p: p.name == "results.json"):
            self._put(p, posixpath.join(self.root, p.relative_to(run_dir).as_posix()))
        if self.fs.exists(self.ckpt):
            self.fs.rm(self.ckpt, recursive=True)

    # -- a running run's checkpoint ----------------------------------------------------------
    def download_checkpoint(self, folder: Path) -> dict | None:
        """The stored checkpoint into ``folder`` (state.json last) and the stored log beside it;
        returns the checkpoint's state, or None when storage holds none."""
        data = self._read(posixpath.join(self.ckpt, STATE))
        if data is None:
            return None
        state = json.loads(data)
        named = set(state["files"].values())
        for path in self._files(self.ckpt):
            name = posixpath.basename(path)
            if name in named or not _task_file_or_state(name):
                self._get(path, folder / name)
                self.sent.add(name)
        (folder / STATE).write_bytes(data)
        log = self._read(posixpath.join(self.root, "log.txt"))
        if log is not None:
            (folder.parent / "log.txt").write_bytes(log)
        return state

    def upload_checkpoint(self, folder: Path) -> bool:
        """Mirror the local checkpoint: the files its state.json names and the kind's other files first,
        then state.json, then the stale files go. False when a newer checkpoint replaced the one read
        part-way (the next call uploads that one)."""
        try:
            data = (folder / STATE).read_bytes()
        except FileNotFoundError:
            return False
        named = set(json.loads(data)["files"].values())
        local = {p.name for p in folder.iterdir() if p.is_file()}
        wanted = sorted(named | {n for n in local if not _task_file_or_state(n)})
        try:
            for name in wanted:
                if name not in self.sent:
                    self._put(folder / name, posixpath.join(self.ckpt, name))
                    self.sent.add(name)
        except FileNotFoundError:
            return False
        tmp = posixpath.join(self.ckpt, STATE + ".tmp")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, posixpath.join(self.ckpt, STATE))
        for path in self._files(self.ckpt):
            name = posixpath.basename(path)
            if TASK_FILE.match(name) and name not in named:
                self.fs.rm(path)
                self.sent.discard(name)
        return True

    def upload_log(self, log: Path) -> None:
        if log.is_file():
            self._put(log, posixpath.join(self.root, "log.txt"))

    # -- fsspec ------------------------------------------------------------------------------
    def _files(self, root: str) -> list[str]:
        self.fs.invalidate_cache()
        return self.fs.find(root) if self.fs.exists(root) else []

    def _read(self, path: str) -> bytes | None:
        self.fs.invalidate_cache()
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    def _get(self, path: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        self.fs.get_file(path, str(local))

    def _put(self, local: Path, path: str) -> None:
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self.fs.put_file(str(local), path)


def _task_file_or_state(name: str) -> bool:
    return bool(TASK_FILE.match(name)) or name.startswith(STATE)


class CheckpointMirror:
    """A thread that uploads ``run_dir/checkpoint`` to storage whenever its state.json changes (every task
    boundary), and the run's log with it. ``stop()`` makes a last pass; errors are written to the log and
    tried again at the next change."""

    def __init__(self, storage: RunStorage, run_dir: Path, interval: float = 0.2):
        self.storage, self.run_dir, self.interval = storage, run_dir, interval
        self.state_file = run_dir / "checkpoint" / STATE
        self.seen = self._stamp()                   # a checkpoint downloaded before the run is in storage already
        self.uploads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="checkpoint-mirror", daemon=True)

    def start(self) -> "CheckpointMirror":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()

    def sync(self) -> None:
        """Upload the checkpoint if state.json changed since the last upload."""
        stamp = self._stamp()
        if stamp is None or stamp == self.seen:
            return
        try:
            if self.storage.upload_checkpoint(self.state_file.parent):
                self.seen = stamp
                self.uploads += 1
                self.storage.upload_log(self.run_dir / "log.txt")
        except Exception as exc:                    # storage unreachable for a while: try again later
            with open(self.run_dir / "log.txt", "a") as fh:
                fh.write(f"[forgetlab sweep] warning: checkpoint upload failed: {type(exc).__name__}: {exc}\n")

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.state_file.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size      # state.json is replaced, never rewritten in place
