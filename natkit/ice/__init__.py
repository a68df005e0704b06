"""ICE tooling: candidates (parse, classify, validate, diagnose), the iceServers configuration
(browser-exact URL validation, DNS), gathering per server, and the live configuration check.

Modules: :mod:`~natkit.ice.candidates`, :mod:`~natkit.ice.sdp`, :mod:`~natkit.ice.classify`,
:mod:`~natkit.ice.diagnose`, :mod:`~natkit.ice.config`, :mod:`~natkit.ice.dns`,
:mod:`~natkit.ice.gather`, :mod:`~natkit.ice.check`, :mod:`~natkit.ice.hints`,
:mod:`~natkit.ice.tls`. Nothing is imported here, so ``import natkit.ice`` stays cheap.
"""
