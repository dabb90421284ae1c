"""Atomic writes of files and folders: a reader never sees a half-written report or checkpoint,
and what a killed writer left behind is cleaned by the next write to the same place.

Temporary names carry the writer's process id (``.NAME.pdprune-PID-RANDOM.tmp``, a folder), so a
later write removes only the leftovers of processes that no longer run.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_folder",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "ensure_writable_folder",
    "readable_folder",
]

_TEMP = re.compile(
    r"\.(?P<name>.+)\.pdprune-(?:(?P<kind>new|ready|old|trash)-)?(?P<pid>\d+)-(?P<start>\d+)-[0-9a-f]+"
    r"(?:\.tmp)?"
)


def _start_ticks(pid: int) -> int:
    """When process ``pid`` started (Linux clock ticks since boot; 0 where unknown). With the pid it
    tells a writer from a later process that reuses its pid (a restarted container's pid 1)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def _temp_name(target: Path, kind: str | None = None) -> Path:
    tag = f"{kind}-" if kind else ""
    suffix = "" if kind else ".tmp"
    pid = os.getpid()
    return (
        target.parent
        / f".{target.name}.pdprune-{tag}{pid}-{_start_ticks(pid)}-{secrets.token_hex(4)}{suffix}"
    )


def _leftovers(target: Path, kind: str | None, dead_only: bool = True) -> list[Path]:
    """Temporary files (``kind`` None) or folders of ``target``, by default only those left by
    writers that no longer run."""
    found = []
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        if match is None or match["name"] != target.name or match["kind"] != kind:
            continue
        if (kind is None) != entry.name.endswith(".tmp"):
            continue  # a folder swap's new/ready/old folders never end in .tmp; a file write's always
        if not dead_only or not _process_alive(int(match["pid"]), int(match["start"])):
            found.append(entry)
    return sorted(found)


def _process_alive(pid: int, start: int) -> bool:
    """Whether the writer that named a leftover may still run (another thread of this process,
    too). A process of the same pid that started at another time is not that writer."""
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            pass  # it exists but is not ours to signal
    now = _start_ticks(pid)
    return start == 0 or now == 0 or now == start


def _remove(path: Path, target: Path | None = None) -> None:
    """Delete a leftover; a folder is first renamed to a trash name, so a delete cut short never
    leaves a partial folder under a name a reader would trust."""
    if path.is_dir() and not path.is_symlink():
        if target is not None and not path.name.startswith(f".{target.name}.pdprune-trash-"):
            trash = _temp_name(target, "trash")
            os.rename(path, trash)
            path = trash
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not every platform opens folders
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], companions: bool = False
) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so ``path`` holds either the old or the new
    content, never a mix; on any error the temporary file is removed and ``path`` is untouched.
    With ``companions``, files ``write`` creates beside the temporary one (an ONNX model's external
    weights, named after ``path``) are moved beside ``path`` first, each atomically.
    """
    given, target = Path(path), Path(os.path.realpath(path))  # a symlink keeps naming the file
    if target.parent.exists() and not target.parent.is_dir():
        raise NotADirectoryError(f"cannot write {target}: {target.parent} is a file, not a folder")
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {target}: it is a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in _leftovers(target, None):
        _remove(stale)
    # A private folder holds the temporary file, and whatever the writer creates beside it
    # (safetensors stages its own temporary file there), so a killed write leaves one named leftover.
    scratch = _temp_name(target)
    scratch.mkdir()
    tmp = scratch / target.name
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _existing_mode(target) or (0o666 & ~_umask()))
        if companions:
            for extra in scratch.iterdir():
                if extra != tmp and extra.is_file():
                    os.replace(extra, target.parent / extra.name)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _fsync_folder(target.parent)
    return given


def atomic_folder(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(staging)`` on a new folder beside ``path``, then swap it in for ``path``.

    Files already in ``path`` that ``write`` did not write are carried over (hard links where the
    file system allows, else copies), so nothing else a user keeps there is lost. A kill at any
    point leaves a folder that :func:`readable_folder` finds whole: the old one or the new one.
    The next write cleans what a killed one left behind.
    """
    given, target = Path(path), Path(os.path.realpath(path))
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"cannot write the folder {target}: a file of that name exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover_folder(target)
    for kind in ("new", "ready", "old", "trash"):
        for stale in _leftovers(target, kind):
            _remove(stale, target)
    staging = _temp_name(target, "new")
    staging.mkdir()
    try:
        write(staging)
        if target.is_dir():
            _carry_over(target, staging)
        for entry in staging.rglob("*"):
            if entry.is_file() and not entry.is_symlink():
                with open(entry, "rb") as handle:
                    os.fsync(handle.fileno())
        _fsync_folder(staging)
        ready = _temp_name(target, "ready")
        os.rename(staging, ready)  # from here on the new folder is known to be whole
        staging = ready
    except BaseException:
        _remove(staging, target)
        raise
    cwd = _cwd_inside(target)
    old = _temp_name(target, "old")
    if target.exists():
        os.rename(target, old)
    os.rename(ready, target)
    _fsync_folder(target.parent)
    if old.exists():
        _carry_over(old, target)  # what others wrote into the folder while this save ran
    _remove(old, target)
    if cwd is not None:
        os.chdir(cwd)  # the process stood in the folder that was swapped out
    return given


def readable_folder(path: str | os.PathLike[str]) -> Path:
    """``path``, or, if a save was killed while swapping folders, the whole folder it left beside
    ``path`` (the new one if it was complete, else the old one). Read-only: renames nothing."""
    target = Path(os.path.realpath(path))  # through a symlink, as atomic_folder writes
    if target.exists():
        return target
    for kind in ("ready", "old"):  # a ready folder is whole by construction; an old one was whole
        found = _leftovers(target, kind, dead_only=False)
        if found:
            return found[-1]
    return target


def _recover_folder(target: Path) -> None:
    if target.exists():
        return
    for kind in ("ready", "old"):
        found = _leftovers(target, kind)
        if found:
            os.rename(found[-1], target)
            return


def _carry_over(source: Path, destination: Path) -> None:
    for entry in source.iterdir():
        into = destination / entry.name
        if into.exists() or into.is_symlink():
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), into)
        elif entry.is_dir():
            shutil.copytree(entry, into, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(entry, into)


def _link_or_copy(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _cwd_inside(folder: Path) -> str | None:
    try:
        cwd = os.getcwd()
    except OSError:
        return None
    return cwd if Path(cwd) == folder or folder in Path(cwd).parents else None


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
