"""natkit's compiled extension modules: import one, or say why it does not run.

The C fast paths are CPython extension modules built at install time (setup.py). They are
imported from the installed package like any other module, never built or looked up
anywhere else at run time. ``NATKIT_NO_CEXT=1`` makes every caller choose its pure-Python
path; so does a missing (not built) or unloadable module, and the reason is kept so the
servers can say at start which path they run and why.
"""

from __future__ import annotations

import importlib
import os
import threading
from types import ModuleType

_lock = threading.Lock()
_tried: dict[tuple[str, bool], tuple[ModuleType | None, str]] = {}


def disabled_by_env() -> str:
    """``"NATKIT_NO_CEXT=<value>"`` when the environment turns the C paths off, else ``""``."""
    value = os.environ.get("NATKIT_NO_CEXT", "")
    return "" if value in ("", "0") else f"NATKIT_NO_CEXT={value}"


def load(name: str, *, honour_env: bool = True) -> tuple[ModuleType | None, str]:
    """(the extension module ``name``, "") or (None, why not); decided once per process.

    ``honour_env=False`` is for tools without a pure-Python path (the benchmarks' load
    generators): NATKIT_NO_CEXT chooses the servers' paths, not theirs."""
    with _lock:
        if (name, honour_env) in _tried:
            return _tried[name, honour_env]
        why = disabled_by_env() if honour_env else ""
        module: ModuleType | None = None
        if not why:
            try:
                module = importlib.import_module(name)
            except ModuleNotFoundError as exc:
                if exc.name != name:
                    raise  # the module is there but imports something missing: a bug
                why = "extension not built"
            except ImportError as exc:  # there, but this interpreter cannot load it
                why = f"extension {name} cannot be loaded: {exc}"
        _tried[name, honour_env] = (module, why)
        return module, why


def forget() -> None:
    """Decide again on the next :func:`load` (tests flip NATKIT_NO_CEXT)."""
    with _lock:
        _tried.clear()


class Extension:
    """One extension module with a pure-Python alternative, as its users ask about it.

    ``how`` says what the C path does, for the start line; ``{m.NAME}`` fields are read from
    the module (``"recvmmsg/sendmmsg, {m.BATCH} datagrams per call"``)."""

    def __init__(self, name: str, how: str) -> None:
        self.name, self.how = name, how

    def load(self) -> ModuleType | None:
        """The module, or None when it is not built, cannot load or NATKIT_NO_CEXT is set."""
        return load(self.name)[0]

    def status(self) -> str:
        """``"c"`` when the C path can run, else ``"python (why)"`` (stats, bench reports)."""
        module, why = load(self.name)
        return "c" if module is not None else f"python ({why})"

    def describe(self, enabled: bool = True) -> str:
        """One line for a server's start: which path it runs and why ("C fast path (NAME,
        HOW)", "pure Python: NATKIT_NO_CEXT=1", "pure Python: extension not built")."""
        if not enabled:
            return "pure Python: fast_path=False"
        module, why = load(self.name)
        if module is None:
            return f"pure Python: {why}"
        return f"C fast path ({self.name}, {self.how.format(m=module)})"
