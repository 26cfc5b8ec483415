"""The upstream: one client interface, one map of transport errors, aiohttp's client behind it."""
