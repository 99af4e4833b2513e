"""Errors that describe bad input from a user, shown by the command-line tools as one line."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from the user (a file, a code, an option).

    The message must name the offending thing (file path, argument name) and say what is wrong, in one
    line: the CLIs print it as ``nphm-track: error: <message>`` and exit non-zero.
    """


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message carries the install command."""
