"""Read user-supplied JSON and text as a browser's ``JSON.parse`` would take it, within bounds.

Hostile or broken input (a file of gigabytes, ``/dev/zero``, nesting 100,000 deep, a
5,000-digit integer, ``NaN``) ends in one :class:`~natkit.errors.UsageError` line naming the
file and what is wrong, never in a MemoryError or RecursionError traceback.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from typing import Any

from natkit.errors import UsageError

__all__ = ["MAX_DEPTH", "MAX_INPUT_BYTES", "loads_strict", "read_text_file", "read_text_input"]

MAX_INPUT_BYTES = 8 * 1024 * 1024  # an iceServers list is a few KiB, an SDP tens of KiB
MAX_DEPTH = 64  # RTCConfiguration needs 4 levels
MAX_INT_DIGITS = 20  # ports, priorities, sdpMLineIndex: no integer a browser sends is longer

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


class _Refused(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON (a browser's JSON.parse rejects it)")


def _int(text: str) -> int:
    digits = text.lstrip("-")
    if len(digits) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits)} digits (at most {MAX_INT_DIGITS} here)")
    return int(text)


def _float(text: str) -> float:
    if len(text) > 64:
        raise _Refused(f"a number of {len(text)} characters")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"{text} overflows to Infinity")
    return value


def _depth(text: str) -> int:
    """The deepest nesting of arrays/objects outside strings (stops counting past the limit)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        else:
            depth -= 1
    return deepest


def loads_strict(text: str, source: str, expected: str) -> Any:
    """``json.loads`` with a browser's strictness (no NaN/Infinity) and bounded nesting and
    number sizes. Raises UsageError ``source:line:col: invalid JSON: ... (expected ...)``."""
    if _depth(text) > MAX_DEPTH:
        raise UsageError(f"{source}: JSON nested more than {MAX_DEPTH} levels deep; "
                         f"expected {expected}")
    try:
        return json.loads(text, parse_constant=_no_constant, parse_int=_int, parse_float=_float)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{source}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg} (expected {expected})"
        ) from None
    except _Refused as exc:
        raise UsageError(f"{source}: invalid JSON: {exc}; expected {expected}") from None
    except (RecursionError, ValueError, MemoryError) as exc:  # belt and braces
        raise UsageError(f"{source}: unreadable JSON ({type(exc).__name__}); "
                         f"expected {expected}") from None


def _too_big(source: str, limit: int) -> UsageError:
    return UsageError(f"{source}: larger than {limit // (1024 * 1024)} MiB; this is not "
                      "an input natkit reads (give the file itself, not an archive or a device)")


def read_text_file(path: str, expected: str = "", limit: int = MAX_INPUT_BYTES) -> str:
    """The UTF-8 text of ``path``, or a one-line UsageError saying why not; ``expected`` ("an
    iceServers JSON file") is named when the path is a directory, too big or not text. Reads
    at most ``limit`` bytes (so ``/dev/zero`` or a 2 GB file costs nothing)."""
    want = f"; expected {expected}" if expected else ""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{path}: is a directory{want.replace(';', ',')}")
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise _too_big(path, limit)
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path}: is a directory{want.replace(';', ',')}") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise _too_big(path, limit)
    return _decode(data, path, want)


def read_text_input(name: str, expected: str = "", limit: int = MAX_INPUT_BYTES) -> tuple[str, str]:
    """(text, source) of a file, or of stdin for '-'; the same bounds as :func:`read_text_file`."""
    if name != "-":
        return read_text_file(name, expected, limit), name
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError(f"no input: give a FILE or pipe {expected or 'the input'} into stdin")
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise _too_big("<stdin>", limit)
    return _decode(data, "<stdin>", f"; expected {expected}" if expected else ""), "<stdin>"


def _decode(data: bytes, source: str, want: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{source}: not UTF-8 text{want}") from None
    if "\x00" in text:
        raise UsageError(f"{source}: binary data (NUL bytes), not text{want}")
    return text
