"""Errors that are the user's to fix; the command line prints them as one line (exit code 2).

Everything here is raised for a cause outside the program (a missing package, an unusable file,
a run folder in the way, numbers that are not finite); any other exception reaching the command
line is a bug and keeps its traceback.
"""

from ..errors import NonFiniteError

__all__ = [
    "CheckpointError",
    "IncompatibleResumeError",
    "MissingDependencyError",
    "NonFiniteError",
    "RunFolderError",
]


class MissingDependencyError(ImportError):
    """An optional package that a feature needs is missing; the message names the pip command."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, from another version or model.

    The message names the file and the problem.
    """


class RunFolderError(ValueError):
    """A training output folder cannot be used as asked (e.g. it holds another run)."""


class IncompatibleResumeError(ValueError):
    """``--resume`` asked for settings the checkpoint cannot continue with."""
