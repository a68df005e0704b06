"""pytest plugin: stun_server and turn_server fixtures (filled in by the TURN work)."""
