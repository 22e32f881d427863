"""Errors that are the user's to fix; the command line prints them as one line (exit code 2)."""


class MissingDependencyError(ImportError):
    """An optional package that a feature needs is not installed; the message names the pip command."""
