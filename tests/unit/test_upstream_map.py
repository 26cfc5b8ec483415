"""The one upstream error map (`failure` in gateproxy/upstream/interface.py): which failure
is which answer, before the answer's head and within its body; and the import rules that
let the fence (gateproxy/aio/) use it."""

from __future__ import annotations

import ast
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp.http_exceptions import BadStatusLine

from gateproxy.upstream.interface import FAILURES, TIMEOUT, UNAVAILABLE, UpstreamError, failure

ROOT = Path(__file__).resolve().parents[2]
NOT_ACCEPTED = "the upstream did not accept a connection in time"

# exception, code, message before the head, message within the body; "{exc}": its text.
CASES = [
    # connect timeout (aiohttp's; FastUpstream raises the same)
    (aiohttp.ConnectionTimeoutError("Connection timeout to host"), UNAVAILABLE,
     NOT_ACCEPTED, NOT_ACCEPTED),
    # read timeouts
    (aiohttp.SocketTimeoutError("Timeout on reading data from socket"), TIMEOUT,
     "no response from the upstream within 250 ms", "the upstream stalled mid-response"),
    (aiohttp.ServerTimeoutError(), TIMEOUT,
     "no response from the upstream within 250 ms", "the upstream stalled mid-response"),
    (TimeoutError(), TIMEOUT,
     "no response from the upstream within 250 ms", "the upstream stalled mid-response"),
    # closed or reset without an answer, a body cut short, any aiohttp client error
    (aiohttp.ServerDisconnectedError(), UNAVAILABLE,
     "the upstream is unavailable: Server disconnected",
     "the upstream broke off: Server disconnected"),
    (aiohttp.ClientOSError(104, "Connection reset by peer"), UNAVAILABLE,
     "the upstream is unavailable: [Errno 104] Connection reset by peer",
     "the upstream broke off: [Errno 104] Connection reset by peer"),
    (aiohttp.ClientPayloadError("Response payload is not completed"), UNAVAILABLE,
     "the upstream is unavailable: Response payload is not completed",
     "the upstream broke off: Response payload is not completed"),
    (aiohttp.ClientConnectionError("Connection lost"), UNAVAILABLE,
     "the upstream is unavailable: Connection lost", "the upstream broke off: Connection lost"),
    # the operating system's: refused, reset, DNS, TLS
    (ConnectionRefusedError(111, "Connection refused"), UNAVAILABLE,
     "the upstream is unavailable: [Errno 111] Connection refused",
     "the upstream broke off: [Errno 111] Connection refused"),
    (ConnectionResetError(104, "Connection reset by peer"), UNAVAILABLE,
     "the upstream is unavailable: [Errno 104] Connection reset by peer",
     "the upstream broke off: [Errno 104] Connection reset by peer"),
    (socket.gaierror(-2, "Name or service not known"), UNAVAILABLE,
     "the upstream is unavailable: [Errno -2] Name or service not known",
     "the upstream broke off: [Errno -2] Name or service not known"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), UNAVAILABLE,
     "the upstream is unavailable: certificate verify failed",
     "the upstream broke off: certificate verify failed"),
]

# What no row names gets the last row's answer: an answer that is not HTTP (as FastUpstream
# meets it from aiohttp's parser), anything else; braces in the text are not a template.
UNKNOWN = [BadStatusLine("NOT HTTP"), ValueError("odd {ms} {exc}"), RuntimeError()]


@pytest.mark.parametrize(("exc", "code", "before", "within"), CASES,
                         ids=[type(case[0]).__name__ for case in CASES])
def test_each_failure_has_its_code_and_message(exc: BaseException, code: str, before: str,
                                               within: str) -> None:
    assert isinstance(exc, FAILURES)  # what the clients catch reaches its row
    error = failure(exc, 250)
    assert isinstance(error, UpstreamError)
    assert (error.code, error.message, str(error)) == (code, before, before)
    error = failure(exc, 250, mid_body=True)
    assert (error.code, error.message) == (code, within)


@pytest.mark.parametrize("exc", UNKNOWN, ids=[type(exc).__name__ for exc in UNKNOWN])
def test_an_unknown_failure_is_upstream_unavailable(exc: BaseException) -> None:
    assert (failure(exc, 250).code, failure(exc, 250).message) == (
        UNAVAILABLE, f"the upstream is unavailable: {exc}")
    assert (failure(exc, 250, mid_body=True).code, failure(exc, 250, mid_body=True).message
            ) == (UNAVAILABLE, f"the upstream broke off: {exc}")


def _gateproxy_imports(relative: str) -> set[str]:
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    found = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names}
    found |= {node.module for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    return {name for name in found if name.split(".")[0] == "gateproxy"}


def test_the_map_module_imports_nothing_of_gateproxy() -> None:
    assert _gateproxy_imports("gateproxy/upstream/interface.py") == set()


def test_the_fenced_client_imports_only_the_fences_interface_the_logs_and_the_fence() -> None:
    """The map reaches the fence through its one interface module, which names it again."""
    imported = _gateproxy_imports("gateproxy/aio/client.py")
    assert "gateproxy.http_rules.actions" in imported
    assert {name for name in imported if not name.startswith("gateproxy.aio.")} <= {
        "gateproxy.http_rules.actions", "gateproxy.logs"}
