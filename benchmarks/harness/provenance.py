"""The commit and command that every result file records, so each number can be traced and rerun.

The commit is that of the repository holding benchmarks/ (with "-dirty" when tracked files were
changed), whatever the working directory; the command is the one typed, as ``python -m
benchmarks.<script> <arguments>``, the form these scripts run in from the repository root.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pdprune.machine import command_line
from pdprune.machine import git_commit as _git_commit

__all__ = ["REPO", "RESULTS", "command_for", "git_commit", "provenance"]

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"  # committed results, one folder per benchmark


def git_commit() -> str:
    """``git rev-parse HEAD`` of this repository, plus "-dirty" with uncommitted changes;
    "unknown" outside git."""
    return _git_commit(REPO)


def command_for(module: str, argv: Sequence[str]) -> str:
    """``python -m <module> <argv>``, quoted to paste into a shell."""
    return command_line(f"python -m {module}", argv)


def provenance(module: str, argv: Sequence[str]) -> dict[str, str]:
    """``{"commit": ..., "command": "python -m <module> <argv>"}`` for a result file."""
    return {"commit": git_commit(), "command": command_for(module, argv)}
