"""What every answer of the proxy's own must look like on the wire (docs/headers.md):
an `HTTP/1.1` status line, exactly one `Server: gateproxy`, a JSON error from the one
error table where it is an error, and nothing that names aiohttp or Python or echoes the
request (the tests put MARKER in each request's headers and, where they can, its target).
"""

from __future__ import annotations

import orjson

from gateproxy.core import answers
from tests.support.rawclient import Exchange

MARKER = "qq7marker7qq"
GATED_CODE = "docker_runner_not_ready"  # the gate's 503 code of the built-in dependency
# The gate's whole 503 body for the built-in dependency, byte for byte.
NOT_READY = b'{"error":{"code":"docker_runner_not_ready","message":"docker-runner not ready"}}'


def check_own_answer(got: Exchange, status: int, code: str | None = None,
                     version: str = "1.1") -> None:
    """Assert that `got` is an own answer with `status` (and, for an error, `code`);
    `version`: of its status line (the admin port's aiohttp server answers an HTTP/1.0
    request in HTTP/1.0, docs/headers.md)."""
    assert got.status_line.startswith(f"HTTP/{version} {status} "), got.status_line
    assert got.all("Server") == [answers.SERVER], got.headers
    text = "\n".join([got.status_line, *(f"{k}: {v}" for k, v in got.headers)])
    for word in ("aiohttp", "python", MARKER):
        assert word not in text.lower(), (word, text)
        assert word.encode() not in got.body.lower(), (word, got.body[:300])
    if code is not None:
        assert got.header("Content-Type") == answers.JSON, got.headers
        error = orjson.loads(got.body)["error"]
        assert set(error) == {"code", "message"}, error
        assert error["code"] == code, error
        assert code == GATED_CODE or answers.STATUS[code] == status
