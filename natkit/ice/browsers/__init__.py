"""Browsers beside natkit's own verdict: what each browser does with an iceServers list.

:mod:`~natkit.ice.browsers.knowledge` holds the static rules (what Chromium and Firefox ignore
or reject, with the source of each rule); :mod:`~natkit.ice.browsers.base` the shape of a live
gathering run by a real browser; :mod:`~natkit.ice.browsers.chromium` drives headless
Chromium over the DevTools protocol and :mod:`~natkit.ice.browsers.firefox` headless Firefox
over WebDriver BiDi, both as :class:`~natkit.ice.browsers.driver.Driver` s started by
:mod:`~natkit.ice.browsers.process`. Another browser plugs in with :func:`register`: a
factory that returns an :class:`~natkit.ice.browsers.base.IceBrowser`.
"""

from __future__ import annotations

from collections.abc import Callable

from natkit.errors import ConfigError
from natkit.ice.browsers.base import IceBrowser

_FACTORIES: dict[str, Callable[[], IceBrowser]] = {}


def register(name: str, factory: Callable[[], IceBrowser]) -> None:
    """Make ``natkit check --browser NAME`` (and :func:`get`) use ``factory``."""
    _FACTORIES[name] = factory


def names() -> list[str]:
    _builtin()
    return sorted(_FACTORIES)


def get(name: str) -> IceBrowser:
    """A browser driver by name; ConfigError(param="browsers") for an unknown one."""
    _builtin()
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise ConfigError(f"unknown browser {name!r}; known: {', '.join(sorted(_FACTORIES))}",
                          param="browsers") from None


def _builtin() -> None:
    if "chromium" not in _FACTORIES:
        from natkit.ice.browsers.chromium import ChromiumGatherer

        _FACTORIES["chromium"] = ChromiumGatherer
    if "firefox" not in _FACTORIES:
        from natkit.ice.browsers.firefox import FirefoxGatherer

        register("firefox", FirefoxGatherer)
