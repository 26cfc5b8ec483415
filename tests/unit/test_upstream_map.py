"""The one upstream error map (`failure` in gateproxy/upstream/interface.py): which failure
is which answer, before the answer's head and within its body; and the import rules that
keep it the one map: it imports nothing of gateproxy, and the core's upstream client
(gateproxy/engine/upstream.py) takes it from there."""

from __future__ import annotations

import ast
import socket
import ssl
from pathlib import Path

import pytest

from gateproxy.upstream.interface import (
    FAILURES,
    TIMEOUT,
    UNAVAILABLE,
    ConnectTimeout,
    Disconnected,
    Malformed,
    UpstreamError,
    failure,
)

ROOT = Path(__file__).resolve().parents[2]
NOT_ACCEPTED = "the upstream did not accept a connection in time"

# exception, code, message before the head, message within the body.
CASES = [
    # the connect timeout (a TimeoutError, but its own row, before the read timeout's)
    (ConnectTimeout("connection timeout to 127.0.0.1:8080"), UNAVAILABLE,
     NOT_ACCEPTED, NOT_ACCEPTED),
    # the read timeout: no byte for read_timeout_ms
    (TimeoutError(), TIMEOUT,
     "no response from the upstream within 250 ms", "the upstream stalled mid-response"),
    # an answer llhttp refused
    (Malformed("a malformed answer (invalid HTTP status code)"), UNAVAILABLE,
     "the upstream sent a malformed answer (invalid HTTP status code)",
     "the upstream sent a malformed answer (invalid HTTP status code)"),
    # closed before the answer was complete
    (Disconnected("the upstream closed the connection"), UNAVAILABLE,
     "the upstream is unavailable: the upstream closed the connection",
     "the upstream broke off: the upstream closed the connection"),
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

# What no row names gets the last row's answer; braces in the text are not a template, and
# an exception without text is named by its type.
UNKNOWN = [(ValueError("odd {ms} {exc}"), "odd {ms} {exc}"), (RuntimeError(), "RuntimeError"),
           (KeyError("k"), "'k'")]


@pytest.mark.parametrize(("exc", "code", "before", "within"), CASES,
                         ids=[type(case[0]).__name__ for case in CASES])
def test_each_failure_has_its_code_and_message(exc: BaseException, code: str, before: str,
                                               within: str) -> None:
    assert isinstance(exc, FAILURES)  # what the client catches reaches its row
    error = failure(exc, 250)
    assert isinstance(error, UpstreamError)
    assert (error.code, error.message, str(error)) == (code, before, before)
    error = failure(exc, 250, mid_body=True)
    assert (error.code, error.message) == (code, within)


def test_the_connect_timeout_is_not_the_read_timeout() -> None:
    """ConnectTimeout is a TimeoutError: its row must come first, or it would read 504."""
    assert issubclass(ConnectTimeout, TimeoutError)
    assert failure(ConnectTimeout(), 250).code == UNAVAILABLE
    assert failure(TimeoutError(), 250).code == TIMEOUT


@pytest.mark.parametrize(("exc", "text"), UNKNOWN, ids=[type(e).__name__ for e, _ in UNKNOWN])
def test_an_unknown_failure_gets_the_last_row(exc: BaseException, text: str) -> None:
    assert (failure(exc, 250).code, failure(exc, 250).message) == (
        UNAVAILABLE, f"the upstream is unavailable: {text}")
    assert (failure(exc, 250, mid_body=True).code, failure(exc, 250, mid_body=True).message
            ) == (UNAVAILABLE, f"the upstream broke off: {text}")


def test_an_upstream_error_passes_through_unchanged() -> None:
    error = UpstreamError(TIMEOUT, "already decided")
    assert failure(error, 250) is error
    assert failure(error, 250, mid_body=True) is error


def _imports(relative: str) -> dict[str, set[str]]:
    """module -> the names imported from it (empty for a plain `import module`)."""
    tree = ast.parse((ROOT / relative).read_text(encoding="utf-8"))
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):  # relative, without a module
            found.setdefault("." * node.level, set()).update(a.name for a in node.names)
    return found


def test_the_map_module_imports_nothing_of_gateproxy() -> None:
    imported = _imports("gateproxy/upstream/interface.py")
    assert {m for m in imported if m.split(".")[0] == "gateproxy" or m.startswith(".")} \
        == set()


def test_the_cores_client_takes_the_map_from_the_interface() -> None:
    """engine/upstream.py turns failures into answers through `failure` from
    gateproxy.upstream.interface, and defines no map of its own."""
    imported = _imports("gateproxy/engine/upstream.py")
    assert "failure" in imported.get("gateproxy.upstream.interface", set())
    others = {m for m, names in imported.items() if "failure" in names
              and m != "gateproxy.upstream.interface"}
    assert others == set()
    tree = ast.parse((ROOT / "gateproxy/engine/upstream.py").read_text(encoding="utf-8"))
    own = {node.name for node in ast.walk(tree)
           if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assigned = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)}
    assert "failure" not in own and not {"_MAP", "FAILURES"} & assigned
