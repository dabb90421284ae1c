"""The one error a bad file raises: which file, which field, what was expected."""

from __future__ import annotations

import os

__all__ = ["CheckpointError"]


class CheckpointError(ValueError):
    """A checkpoint, plan or exported file that is corrupt, truncated, edited or from another model.

    ``path`` is the file, ``field`` the part of it that is wrong (a tensor name, a plan key),
    ``expected`` what a good file holds there. A ``ValueError``, so existing ``except ValueError``
    code keeps working.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None, field: str, problem: str, expected: str | None = None
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.problem = problem
        self.expected = expected
        where = f"{self.path}: " if self.path is not None else ""
        wanted = f"; expected {expected}" if expected else ""
        super().__init__(f"{where}{field}: {problem}{wanted}")

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.path, self.field, self.problem, self.expected))
