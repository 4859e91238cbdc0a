"""Atomic file writing and strict JSON/YAML reading shared by every module that touches disk.

No output file is ever left half-written: everything is written to a temporary file in the same
folder and renamed into place (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from asft.errors import AsftError


def _umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it."""
    path = Path(path)
    if not overwrite and path.exists():
        raise AsftError(f"{path}: output exists (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes it 0600: give it the mode any new file gets (the umask's)
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def lock_path(target: str | os.PathLike) -> Path:
    """Where the lock of an output (a folder or a file) lives: ``.<name>.lock`` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def check_output(target: str | os.PathLike, folder: bool = True) -> Path:
    """``target`` can be created as a folder (or, ``folder=False``, a file): no part of its path is
    an existing file, and a folder target is not one. One line otherwise, before anything is done."""
    target = Path(target)
    if target.exists() and folder and not target.is_dir():
        raise AsftError(f"{target}: exists and is not a folder (an output folder is expected)")
    if target.is_dir() and not folder:
        raise AsftError(f"{target}: is a folder (an output file is expected)")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise AsftError(f"{target}: {parent} is a file, not a folder")
            break
    return target


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, command: str = "an unnamed writer", wait: bool = False,
                folder: bool = True) -> Iterator[None]:
    """One writer per output: hold an exclusive lock on ``target`` (a folder or a file) while it is
    written, or raise one line naming the process that holds it (``wait``: wait for it instead, as
    an experiment's run does when another worker is making it, then finds it made).

    The lock is an ``fcntl.flock`` on ``.<name>.lock`` beside the target, holding the owner's pid,
    host and command: the kernel releases it when its process dies (kill -9 included), so a lock
    left by a dead process is stale by construction and taken over silently. On acquiring, the
    temporary files an earlier, killed writer of this target left behind (``.<name>.*.tmp`` beside
    it, and inside it when it is a folder) are removed: nobody else may be writing them.
    ``folder``: whether the target is a folder (``check_output``)."""
    import fcntl
    import socket

    target = check_output(target, folder)
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                owner = json.loads(os.read(fd, 4096) or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                owner = {}
            os.close(fd)
            who = (f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} ({owner.get('command', '?')})"
                   if owner else "another process")
            raise AsftError(f"{target}: being written by {who}; wait for it to finish (one writer per "
                            f"output; the lock is {path})") from None
        try:  # the file may have been removed by its previous owner between our open and flock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command}).encode())
        for folder, pattern in ((target.parent, f".{target.name}.*.tmp"), (target, ".*.tmp")):
            if folder.is_dir():
                for orphan in folder.glob(pattern):
                    if orphan.is_dir():
                        shutil.rmtree(orphan, ignore_errors=True)
                    else:
                        orphan.unlink(missing_ok=True)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held: a waiting opener re-checks the inode
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise AsftError(f"{path}: is a folder, not a file")
    if not path.is_file():
        raise AsftError(f"{path}: file not found")


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content; a missing or non-UTF-8 file is one clear line."""
    path = Path(path)
    _check_file(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise AsftError(f"{path}: not UTF-8 text (byte {e.start}, line {line}); save it as UTF-8") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, or a JSONL file (one object per line) when it ends in ``.jsonl`` (or a
    gzip-compressed one, ``.jsonl.gz``: the answers a report keeps)."""
    path = Path(path)
    if path.name.endswith(".jsonl.gz"):
        import gzip

        _check_file(path)
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise AsftError(f"{path}: not a gzip-compressed UTF-8 JSONL file ({e})") from None
    else:
        text = read_text(path)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise AsftError(f"{path}:{i}: malformed JSON line ({e.msg})") from None
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise AsftError(f"{path}: malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


def read_yaml(path: str | os.PathLike) -> dict:
    import yaml

    path = Path(path)
    text = read_text(path)
    try:
        obj = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AsftError(f"{path}: malformed YAML ({str(e).splitlines()[0]})") from None
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise AsftError(f"{path}: expected a mapping of option names to values")
    return obj


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one line (logs are append-only; a crash loses at most the last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def content_hash(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of a sha256 of ``obj``'s content: the one hashing helper behind
    every cache key. A ``Path`` hashes the file's bytes, or a folder's files (relative names and
    bytes, in name order); ``bytes`` hash as they are; anything else as canonical JSON."""
    h = hashlib.sha256()

    def feed(path: Path) -> None:  # in blocks: model files need not fit in memory twice
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)

    if isinstance(obj, Path):
        if obj.is_dir():
            for f in sorted(p for p in obj.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(obj)).encode() + b"\0")
                feed(f)
                h.update(b"\0")
        else:
            feed(obj)
    elif isinstance(obj, (bytes, bytearray)):
        h.update(obj)
    else:
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())
    return h.hexdigest()[:n]
