"""The fence: every use of aiohttp's private or undocumented internals, and nothing else.

- `server`: the connection limits (a RequestHandler and a TCP site of our own);
- `fastpath`: the gate's 503 and plain GETs answered from `data_received`;
- `client`: the lean upstream client on aiohttp's client protocol;
- `wire`: relayed responses without aiohttp's own headers;
- `needs` and `check`: what each needs, checked once at start-up.

A feature whose names are missing in the installed aiohttp is switched off with one
WARNING, and the proxy serves on public APIs (docs/architecture.md, "The fence").
Code outside this package uses documented aiohttp, multidict and yarl APIs only
(tests/integration/test_fence.py holds it to that).
"""
