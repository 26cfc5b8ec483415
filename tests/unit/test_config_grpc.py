"""probe: grpc in the configuration: keys, environment, one clear line per mistake."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateproxy import config
from tests.support.config_files import problems, write


def test_grpc_keys_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
dependencies:
  - {name: docker-runner, probe: grpc, base_url: "grpc://runner:50051/"}
  - {name: other, probe: GRPC, base_url: "grpcs://other.example:443", health_service: ""}
""")
    runner, other = config.load(path, {}).dependencies
    assert (runner.probe, runner.base_url, runner.ready_path, runner.health_service) == (
        "grpc", "grpc://runner:50051", "/agynio.api.runner.v1.RunnerService/Ready", None)
    assert (other.probe, other.base_url, other.health_service) == (
        "grpc", "grpcs://other.example:443", "")
    http = config.load(None, {}).dependencies[0]
    assert (http.probe, http.ready_path, http.health_service) == ("http", "/v1/ready", None)


@pytest.mark.parametrize(("env", "url"), [
    ({"DOCKER_RUNNER_GRPC_PORT": "50052"}, "grpc://127.0.0.1:50052"),
    ({"DOCKER_RUNNER_GRPC_HOST": "runner"}, "grpc://runner:50051"),
    ({"DOCKER_RUNNER_GRPC_HOST": "::1", "DOCKER_RUNNER_GRPC_PORT": "7"}, "grpc://[::1]:7"),
])
def test_the_platform_grpc_variables_mean_probe_grpc(env: dict[str, str], url: str) -> None:
    dep = config.load(None, env).dependencies[0]
    assert (dep.probe, dep.base_url) == ("grpc", url)


def test_a_given_base_url_wins_over_the_grpc_variables(tmp_path: Path) -> None:
    env = {"DOCKER_RUNNER_GRPC_PORT": "50052"}
    dep = config.load(None, {**env, "DOCKER_RUNNER_BASE_URL": "http://r:7071"}).dependencies[0]
    assert (dep.probe, dep.base_url) == ("http", "http://r:7071")
    path = write(tmp_path, "dependencies: [{name: docker-runner, base_url: 'http://f:1'}]\n")
    dep = config.load(path, env).dependencies[0]
    assert (dep.probe, dep.base_url) == ("http", "http://f:1")


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("dependencies: [{name: docker-runner, base_url: 'grpc://r:1'}]", {},
     "{path}: dependencies[0].base_url: grpc:// needs probe: grpc (the probe is http), "
     "got 'grpc://r:1'"),
    ("dependencies: [{name: docker-runner, base_url: 'http://r:1', health_service: x}]", {},
     "{path}: dependencies[0].health_service: needs probe: grpc (the probe is http)"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'http://r:1'}]", {},
     "{path}: dependencies[0].base_url: must be a grpc:// or grpcs:// URL (probe: grpc), "
     "got 'http://r:1'"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'grpc://r'}]", {},
     "{path}: dependencies[0].base_url: must name a host and a port (grpc://host:50051), "
     "got 'grpc://r'"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'grpc://u:pw@r:1'}]", {},
     "{path}: dependencies[0].base_url: must not carry credentials (gRPC sends none), "
     "got 'grpc://r:1'"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'grpc://r:1/x'}]", {},
     "{path}: dependencies[0].base_url: must be only scheme, host and port, got 'grpc://r:1/x'"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'grpc://r:1', ready_path: /v1/x/ready}]",
     {}, "{path}: dependencies[0].ready_path: must be a full gRPC method path "
     "(/package.Service/Method), got '/v1/x/ready'"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'grpc://r:1', ready_path: /a.B/C, "
     "health_service: x}]", {}, "{path}: dependencies[0].health_service: calls "
     "grpc.health.v1.Health/Check instead of ready_path: set one of the two"),
    ("dependencies: [{name: d, probe: grpc, base_url: 'grpc://r:1', health_service: [1]}]",
     {}, "{path}: dependencies[0].health_service: must be a gRPC service name (a string), "
     "got [1]"),
    ("dependencies: [{name: d, probe: soap, base_url: 'http://r:1'}]", {},
     "{path}: dependencies[0].probe: must be one of http, grpc, got 'soap'"),
    ("dependencies: [{name: d, base_url: 'http://r:1', not_ready: {grpc_code: LATER}}]", {},
     "{path}: dependencies[0].not_ready.grpc_code: must be one of CANCELLED, UNKNOWN, "
     "INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, "
     "RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, "
     "INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED, got 'LATER'"),
    ("", {"DOCKER_RUNNER_GRPC_PORT": "70000"},
     "env DOCKER_RUNNER_GRPC_PORT: dependencies[0].base_url: DOCKER_RUNNER_GRPC_PORT must "
     "be a port number (1-65535), got '70000'"),
    ("", {"DOCKER_RUNNER_GRPC_HOST": "a/b"},
     "env DOCKER_RUNNER_GRPC_HOST: dependencies[0].base_url: DOCKER_RUNNER_GRPC_HOST must "
     "be a host name or address, got 'a/b'"),
])
def test_one_clear_line_per_mistake(tmp_path: Path, text: str, env: dict[str, str],
                                    expected: str) -> None:
    path = write(tmp_path, text + "\n")
    assert problems(path, env) == [expected.format(path=path)]


def test_check_config_shows_the_kind(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateproxy", "check-config"], capture_output=True, text=True,
        timeout=60, check=True,
        env={"PATH": "/usr/bin:/bin", "DOCKER_RUNNER_GRPC_HOST": "runner",
             "DOCKER_RUNNER_SHARED_SECRET": "not-printed"})
    [dep] = yaml.safe_load(done.stdout)["dependencies"]
    assert (dep["probe"], dep["base_url"], dep["ready_path"], dep["health_service"]) == (
        "grpc", "grpc://runner:50051", "/agynio.api.runner.v1.RunnerService/Ready", None)
    assert "not-printed" not in done.stdout
