"""Atomic file writes: a reader never sees a half-written report or checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_writable_folder",
]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so ``path`` holds either the old or the new
    content, never a mix; on any error the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    if target.parent.exists() and not target.parent.is_dir():
        raise NotADirectoryError(f"cannot write {target}: {target.parent} is a file, not a folder")
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, _existing_mode(target) or (0o666 & ~_umask()))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _existing_mode(target: Path) -> int | None:
    try:
        return target.stat().st_mode & 0o777
    except FileNotFoundError:
        return None


def ensure_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Check before a long job that ``folder`` is, or can become, a folder we can write to."""
    path = Path(folder)
    for parent in [path, *path.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"output folder {path} cannot be created: {parent} is a file")
            if not os.access(parent, os.W_OK):
                raise PermissionError(f"output folder {path}: {parent} is not writable")
            break
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")
