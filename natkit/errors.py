"""Errors shared by every layer.

A :class:`UsageError` is a mistake the user can fix (bad flag, bad file, bad address): the CLI
prints its message as one line and exits with status 2, never with a traceback.
"""

from __future__ import annotations


class NatkitError(Exception):
    """Base class of natkit's own errors."""


class UsageError(NatkitError):
    """A user-caused error: bad input, bad configuration, missing prerequisite (exit 2)."""

    exit_code = 2
