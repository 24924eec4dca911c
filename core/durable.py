"""Files that survive a crash or a power loss: written to a temporary file, fsynced, renamed, directory fsynced.

After :func:`replace_durably` (or leaving :func:`durable_file`) returns, ``path`` holds the new content and keeps
it through a crash; a crash before that leaves the old content (or no file), never a torn one. The temporary
file lives in the target's directory (a rename is atomic only within one file system), is named
``.<name>.<random>.tmp`` and is removed when writing fails. Every Aegle file that must survive a crash is written
through here (outbox, staging, series filing, watch state, model registry, exported models).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["durable_file", "fsync_dir", "replace_durably", "write_durably"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str | os.PathLike[str], data: bytes) -> None:
    """Write a new file and fsync it (not its directory: the caller renames it or fsyncs the directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def durable_file(path: str | os.PathLike[str], mode: int | None = None, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (safetensors, ONNX export, …).

    On leaving the block without an exception the file is fsynced, given ``mode`` (if set; temporary files
    start as 0600), renamed onto ``path`` and the directory fsynced; on an exception it is removed. ``suffix``:
    for writers that choose a format by the file's extension.
    """
    target = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb") as written:
            os.fsync(written.fileno())
        if mode is not None:
            tmp.chmod(mode)
        tmp.replace(target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_durably(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Give ``path`` the content ``data``, atomically and durably (see the module docstring)."""
    with durable_file(path, mode) as tmp:
        tmp.write_bytes(data)
