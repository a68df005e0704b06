"""Errors shared by every layer, split by who caused them (h11's rule).

- :class:`UsageError`: the user's input is wrong (a flag, a file, an address): fixable by the
  user, exit status 2, one line, never a traceback.
- :class:`ConfigError`: a subclass of it for a library parameter or a configuration key with
  a bad value. It names the parameter (``param``, the keyword of the library call) so the CLI
  can name the flag the user typed instead (:func:`natkit.cli.main` maps it), and where it came
  from (``where``: a file and line, a JSON path).
- :class:`PrerequisiteError`: the host lacks something (root, a kernel feature, a package, a
  running daemon): exit status 2 with what to install or do.
- :class:`ProtocolError`: the remote side did not answer or answered wrongly (a STUN/TURN
  server, a peer): exit status 1, the same as a failed check.
- Anything else is a bug: it is never turned into one of these, never swallowed by a server
  (it is logged and counted), and the CLI lets its traceback through.
"""

from __future__ import annotations

__all__ = ["ConfigError", "NatkitError", "PrerequisiteError", "ProtocolError", "UsageError"]


class NatkitError(Exception):
    """Base class of natkit's own errors."""

    exit_code = 1


class UsageError(NatkitError):
    """A user-caused error: bad input, bad flag, bad file (exit 2)."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A library parameter or configuration key has a value that cannot work.

    ``param`` is the keyword of the library call (``external_ip``) or the configuration key;
    the CLI shows the matching flag (``--external-ip``). ``where`` locates a value read from a
    file (``lab.toml:12``, ``iceServers[1].urls[0]``).
    """

    def __init__(self, message: str, *, param: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class PrerequisiteError(NatkitError):
    """The environment lacks something natkit needs; the message says what to install or do."""

    exit_code = 2


class ProtocolError(NatkitError):
    """The remote side (a server, a peer) failed: no answer, an error response, bad bytes."""

    exit_code = 1
