"""Where a measurement came from, for result files: the machine, the code's commit, the command."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["command_line", "git_commit", "machine_info", "provenance"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, core count, torch threads, OS, Python and torch versions, and the GPU if any."""
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _git(folder: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=folder, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit(folder: str | os.PathLike[str] | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``folder`` (default: the working
    directory), plus "-dirty" when tracked files differ from that commit; "unknown" outside git.

    Untracked files do not count: result files written by earlier runs would otherwise mark every
    later run dirty."""
    where = Path(folder) if folder is not None else Path.cwd()
    head = _git(where, "rev-parse", "HEAD")
    if not head:
        return "unknown"
    status = _git(where, "status", "--porcelain", "--untracked-files=no")
    return head + ("-dirty" if status is None or status else "")


def command_line(prog: str, argv: Sequence[str]) -> str:
    """The command as typed, ready to paste into a shell: ``prog`` then each argument, quoted where needed."""
    return " ".join([prog, *(shlex.quote(arg) for arg in argv)])


def provenance(
    prog: str, argv: Sequence[str], folder: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """``{"commit": ..., "command": ...}`` for a result file (:func:`git_commit`, :func:`command_line`)."""
    return {"commit": git_commit(folder), "command": command_line(prog, argv)}
