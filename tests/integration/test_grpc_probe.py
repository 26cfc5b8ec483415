"""probe: grpc against real gRPC servers on loopback: grpcio's (the reference) and the
grpclib stand-in of the demo."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from gateproxy import config
from gateproxy.core.model import Dependency
from gateproxy.demo.grpc_standin import GrpcRunner
from gateproxy.monitor.grpc_probe import health_response, serving_status, string_message
from gateproxy.monitor.probe import Prober
from gateproxy.monitor.signing import sign
from tests.support.grpc_servers import ReferenceRunner
from tests.support.ports import free_port

SECRET = "grpc-test-secret"


def grpc_dep(url: str, **changes: object) -> Dependency:
    host, port = url.removeprefix("grpc://").rsplit(":", 1)
    env = {"DOCKER_RUNNER_GRPC_HOST": host, "DOCKER_RUNNER_GRPC_PORT": port,
           "DOCKER_RUNNER_SHARED_SECRET": SECRET,
           "DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS": "400"}
    dep = config.load(None, env).dependencies[0]
    return dataclasses.replace(dep, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def reference() -> AsyncIterator[ReferenceRunner]:
    runner = ReferenceRunner(SECRET)
    await runner.start()
    yield runner
    await runner.stop()


@pytest.fixture
async def prober() -> AsyncIterator[Prober]:
    prober = Prober()
    yield prober
    await prober.close()


def test_the_signature_matches_the_reference_vector() -> None:
    headers = sign("dev-shared-secret", "GET", "/v1/ready", 1700000000000,
                   "00000000-0000-4000-8000-000000000000")
    assert headers["x-dr-signature"] == "z4GKm7bIJut/XIMLj+yS4y/JTScEeLp4yOB9klngeIk="


def test_hand_encoded_health_messages_round_trip() -> None:
    assert string_message("") == b""
    assert string_message("runner") == b"\x0a\x06runner"
    assert serving_status(health_response(1)) == 1
    assert serving_status(health_response(2)) == 2
    assert serving_status(b"") == 0
    # An unknown field before the status (a newer server) is skipped.
    assert serving_status(b"\x12\x02hi\x08\x01") == 1
    with pytest.raises(ValueError, match="truncated"):
        serving_status(b"\x08")


async def test_down_then_up_then_down_on_one_kept_connection(
        reference: ReferenceRunner, prober: Prober) -> None:
    dep = grpc_dep(reference.url)
    await reference.stop()
    result = await prober.probe(dep)
    assert result.error is not None and result.error.code == "connection_refused"
    await reference.start()
    assert (await prober.probe(dep)).error is None
    assert (await prober.probe(dep)).error is None
    assert len(reference.peers) == 2 and reference.peers[0] == reference.peers[1], \
        "the second probe reused the open channel"
    assert reference.rejected == []
    await reference.stop()
    result = await prober.probe(dep)
    assert result.error is not None
    assert result.error.code in ("connection_refused", "connection_reset")
    result = await prober.probe(dep)
    assert result.error is not None and result.error.code == "connection_refused"


async def test_unavailable_keeps_the_status_message(reference: ReferenceRunner,
                                                    prober: Prober) -> None:
    reference.mode = "unavailable"
    result = await prober.probe(grpc_dep(reference.url))
    assert result.error is not None
    assert (result.error.code, result.error.message) == (
        "grpc_unavailable", "docker ping failed: no socket")


@pytest.mark.parametrize(("secret", "reason"), [("wrong-secret", "invalid_signature"),
                                                (None, "missing_headers")])
async def test_a_wrong_or_missing_secret_is_grpc_unauthenticated(
        reference: ReferenceRunner, prober: Prober, secret: str | None, reason: str) -> None:
    result = await prober.probe(grpc_dep(reference.url, shared_secret=secret))
    assert result.error is not None
    assert (result.error.code, result.error.message) == ("grpc_unauthenticated", reason)


async def test_a_hanging_ready_is_a_timeout_and_the_next_probe_reconnects(
        reference: ReferenceRunner, prober: Prober) -> None:
    dep = grpc_dep(reference.url, probe_timeout_ms=300)
    reference.mode = "hang"
    result = await prober.probe(dep)
    assert result.error is not None and result.error.code == "timeout"
    assert 250 <= result.duration_ms < 1500
    reference.mode = "ok"
    assert (await prober.probe(dep)).error is None
    assert reference.peers[0] != reference.peers[1], "a timed-out channel is not reused"


async def test_the_standard_health_check(reference: ReferenceRunner, prober: Prober) -> None:
    await reference.set_health("agynio.api.runner.v1.RunnerService", True)
    dep = grpc_dep(reference.url, health_service="agynio.api.runner.v1.RunnerService")
    assert (await prober.probe(dep)).error is None
    await reference.set_health("agynio.api.runner.v1.RunnerService", False)
    result = await prober.probe(dep)
    assert result.error is not None and result.error.code == "grpc_health_not_serving"
    # The overall server ("") is SERVING in grpcio's servicer from the start.
    assert (await prober.probe(dataclasses.replace(dep, health_service=""))).error is None
    result = await prober.probe(dataclasses.replace(dep, health_service="no.such.Service"))
    assert result.error is not None and result.error.code == "grpc_not_found"
    assert reference.peers == [], "Ready was not called"


async def test_an_http_server_is_not_mistaken_for_a_grpc_one(
        prober: Prober, runner: object) -> None:
    url = runner.url.replace("http://", "grpc://")  # type: ignore[attr-defined]
    result = await prober.probe(grpc_dep(url))
    assert result.error is not None
    assert result.error.code in ("bad_response", "connection_reset", "grpc_unknown")


async def test_the_demo_stand_in_answers_like_the_reference(prober: Prober) -> None:
    standin = GrpcRunner(secret=SECRET)
    await standin.start()
    try:
        dep = grpc_dep(standin.url, probe_timeout_ms=300)
        assert (await prober.probe(dep)).error is None
        result = await prober.probe(dataclasses.replace(dep, shared_secret="nope"))
        assert result.error is not None and result.error.code == "grpc_unauthenticated"
        for mode, code in (("unavailable", "grpc_unavailable"), ("hang", "timeout")):
            standin.mode = mode  # type: ignore[assignment]
            result = await prober.probe(dep)
            assert result.error is not None and result.error.code == code
        standin.mode = "ok"
        await standin.stop()
        result = await prober.probe(dep)
        assert result.error is not None
        assert result.error.code in ("connection_refused", "connection_reset")
        await standin.start()
        assert (await prober.probe(dep)).error is None
    finally:
        await standin.stop()


async def test_a_refused_port_from_the_environment(prober: Prober) -> None:
    result = await prober.probe(grpc_dep(f"grpc://127.0.0.1:{free_port()}"))
    assert result.error is not None and result.error.code == "connection_refused"


def test_an_http_only_configuration_never_imports_a_grpc_library() -> None:
    code = ("import sys, asyncio\n"
            "from gateproxy import cli, config\nfrom gateproxy.serve import gateway\n"
            "from gateproxy.monitor.probe import Prober\n"
            "dep = config.load(None, {}).dependencies[0]\n"
            "asyncio.run(Prober().probe(dep))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('grpclib', 'grpc', 'h2', 'gateproxy.monitor.grpc_probe')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
