"""In-process gateways in front of stand-ins: the environment they are configured from,
and their URLs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from gateproxy.demo.standins import StandIn
from gateproxy.serve.gateway import Gateway

# make_gateway(env, path=None) (tests/conftest.py): a started Gateway, stopped after the test.
MakeGateway = Callable[..., Awaitable[Gateway]]


def env_for(upstream: StandIn, runner_url: str, **extra: str) -> dict[str, str]:
    """A gateway on an ephemeral loopback port in front of `upstream`, probing the
    docker-runner at `runner_url` often and without jitter."""
    env = {
        "GATEPROXY_HOST": "127.0.0.1",
        "GATEPROXY_PORT": "0",
        "PLATFORM_SERVER_URL": upstream.url,
        "DOCKER_RUNNER_BASE_URL": runner_url,
        "DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS": "50",
        "DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS": "200",
        "DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS": "0",
        "DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS": "200",
        "DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS": "500",
    }
    env.update(extra)
    return env


def url(gateway: Gateway, path: str = "/") -> str:
    return f"http://127.0.0.1:{gateway.port}{path}"
