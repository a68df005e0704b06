"""The public address and the NAT's behaviour (RFC 4787 / RFC 5780).

:mod:`natkit.nat.probe` (``natkit.probe``) is the entry point; :mod:`natkit.nat.discovery` runs
the tests, :mod:`natkit.nat.classify` decides (sans-IO), :mod:`natkit.nat.servers` parses and
resolves server names.
"""
