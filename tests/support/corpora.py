"""Hand-written corpora shared by several test modules."""

from __future__ import annotations

# Spellings of /api/containers (or a path below it) that a lenient router could take for
# it: every one must be gated (tests/unit/test_routes.py on the pure functions,
# tests/integration/test_gateway.py through a gateway; tests/hostile/ extends the list).
GATED_SPELLINGS = [
    "/api/containers", "/api/containers/", "/api/containers/abc",
    "/api/containers?x=1", "/api/containers#frag",
    "/API/Containers", "/api/CONTAINERS/abc",
    "//api/containers", "/api//containers", "/api/containers//abc",
    "/./api/containers", "/api/./containers", "/x/../api/containers",
    "/api/containers/abc/..", "/api/x/y/../../containers",
    "/%2e/api/containers", "/x/%2E%2E/api/containers", "/x/%2e%2e/api/containers",
    "/%61pi/containers", "/api/%63ontainers", "/api/c%6Fntainers", "/%41PI/%43ONTAINERS",
    "/api%2Fcontainers", "/api%2fcontainers/abc", "/api\\containers", "/api%5Ccontainers",
    "/api/containers;jsessionid=1", "/api;v=2/containers", "/api/containers;/abc",
    "http://evil.example/api/containers", "HTTP://h:1/api//containers?q",
    "/api/containers/11111111-2222-4333-8444-555555555555/terminal/ws?sessionId=x",
    "/api/containers/%2e%2e/containers",
]
