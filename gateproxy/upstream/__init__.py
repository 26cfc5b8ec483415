"""The upstream: what the proxy sees of its client, one map of transport errors, and
riding out the platform-server's restarts (the client itself is the HTTP core's pool)."""
