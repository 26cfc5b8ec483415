"""Configuration: defaults < YAML < environment, and one clear line per problem."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateproxy import config
from gateproxy.config import settings
from tests.support.config_files import problems, write
from tests.support.json_logs import log_lines

SECRET = "s3cr3t-value-never-printed"


def test_defaults_match_the_documented_ones() -> None:
    cfg = config.load(None, {})
    assert (cfg.listen.host, cfg.listen.port) == ("0.0.0.0", 8080)
    assert cfg.upstream.url == "http://127.0.0.1:3010"
    assert cfg.upstream.read_timeout_ms == 300000
    assert (cfg.health_path, cfg.admin_prefix, cfg.admin_port) == ("/health", "/_gateproxy", None)
    assert (cfg.shutdown_delay_ms, cfg.shutdown_grace_ms) == (5000, 20000)
    assert (cfg.limits.max_field_size, cfg.limits.keepalive_timeout_ms) == (16384, 75000)
    (dep,) = cfg.dependencies
    assert (dep.name, dep.health_key, dep.base_url) == (
        "docker-runner", "dockerRunner", "http://127.0.0.1:7071")
    assert dep.ready_path == "/v1/ready" and dep.optional
    assert (dep.retry.base_delay_ms, dep.retry.max_delay_ms, dep.retry.jitter_ms,
            dep.retry.max_retries) == (500, 30000, 250, 0)
    assert [r.prefix for r in dep.gated_routes] == ["/api/containers"]
    assert (dep.not_ready.code, dep.not_ready.message) == (
        "docker_runner_not_ready", "docker-runner not ready")


def test_yaml_overrides_defaults_and_env_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, """
listen: {port: 9000}
upstream: {url: http://upstream:1234}
dependencies:
  - name: docker-runner
    base_url: http://runner-from-yaml:7071
    optional: false
    retry: {base_delay_ms: 100}
    gated_routes:
      - /api/containers
      - {prefix: /test/workspaces, methods: [post]}
      - {prefix: /api/things, methods: [GET]}
""")
    cfg = config.load(path, {"DOCKER_RUNNER_BASE_URL": "http://runner-from-env:7071",
                             "GATEPROXY_PORT": "9100", "DOCKER_RUNNER_OPTIONAL": "YES"})
    assert cfg.listen.port == 9100
    assert cfg.upstream.url == "http://upstream:1234"
    (dep,) = cfg.dependencies
    assert dep.base_url == "http://runner-from-env:7071"
    assert dep.optional is True
    assert dep.retry.base_delay_ms == 100 and dep.retry.max_delay_ms == 30000
    routes = {r.prefix: r.methods for r in dep.gated_routes}
    assert routes["/api/containers"] is None
    assert routes["/test/workspaces"] == frozenset({"POST"})
    assert routes["/api/things"] == frozenset({"GET", "HEAD"}), "a gated GET gates HEAD"
    assert cfg.source == path


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {port: 9001}\n")
    assert config.load(None, {"GATEPROXY_CONFIG": path}).listen.port == 9001


def test_a_new_dependency_takes_per_dependency_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
dependencies:
  - {name: docker-runner, base_url: "http://r:1"}
  - {name: object-store, base_url: "http://s3:9000", ready_path: /minio/health/ready,
     gated_routes: [/api/files]}
""")
    first, second = config.load(path, {}).dependencies
    assert first.not_ready.code == "docker_runner_not_ready"
    assert second.health_key == "objectStore"
    assert second.not_ready.code == "object_store_not_ready"
    assert second.probe_interval_ms == 30000


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("listne: {port: 1}\n", {}, "{path}: listne: unknown key"),
    ("upstream: {url: http://x, read_timeot_ms: 5}\n", {},
     "{path}: upstream.read_timeot_ms: unknown key"),
    ("dependencies:\n  - {name: docker-runner, base_url: 'http://r', retyr: {}}\n", {},
     "{path}: dependencies[0].retyr: unknown key"),
    ("listen: {port: [1\n", {}, "{path}: (document): is not valid YAML at line"),
    ("- just\n- a list\n", {}, "{path}: (document): must be a mapping at the top level"),
    ("", {"DOCKER_RUNNER_OPTIONAL": "maybe"},
     "env DOCKER_RUNNER_OPTIONAL: dependencies[0].optional: must be a boolean"),
    ("dependencies:\n  - {name: docker-runner, base_url: 'http://r',"
     " retry: {base_delay_ms: -5}}\n", {},
     "{path}: dependencies[0].retry.base_delay_ms: must be at least 1, got -5"),
    ("", {"DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS": "-1"},
     "env DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS: dependencies[0].retry.jitter_ms: "
     "must be at least 0"),
    ("", {"DOCKER_RUNNER_BASE_URL": "ftp://runner:21"},
     "env DOCKER_RUNNER_BASE_URL: dependencies[0].base_url: must be an http:// or https:// URL"),
    ("upstream: {url: 'unix:///tmp/sock'}\n", {},
     "{path}: upstream.url: must be an http:// or https:// URL"),
    ("", {"GATEPROXY_PORT": "eighty"}, "env GATEPROXY_PORT: listen.port: must be a whole number"),
    ("", {"GATEPROXY_PORT": "70000"},
     "env GATEPROXY_PORT: listen.port: must be between 0 and 65535"),
    ("log: {format: xml}\n", {}, "{path}: log.format: must be one of json, text"),
    ("limits: {max_field_size: 1023}\n", {},
     "{path}: limits.max_field_size: must be between 1024 and 1048576, got 1023"),
    ("limits: {max_field_size: 1048577}\n", {},
     "{path}: limits.max_field_size: must be between 1024 and 1048576, got 1048577"),
    ("limits: {max_field_size: 16k}\n", {},
     "{path}: limits.max_field_size: must be a whole number, got '16k'"),
    ("limits: {keepalive_timeout_ms: 0}\n", {},
     "{path}: limits.keepalive_timeout_ms: must be at least 1, got 0"),
    ("admin_port: 8080\n", {}, "{path}: admin_port: must differ from listen.port"),
    ("dependencies:\n  - {name: docker-runner, base_url: 'http://r', gated_routes: [api]}\n", {},
     "{path}: dependencies[0].gated_routes[0]: must be a path starting with '/'"),
    ("dependencies:\n  - {name: docker-runner, base_url: 'http://r',"
     " gated_routes: [{prefix: /a, methods: [FETCH]}]}\n", {},
     "{path}: dependencies[0].gated_routes[0].methods: 'FETCH' is not an HTTP method"),
    ("dependencies:\n  - {name: a, base_url: 'http://r'}\n  - {name: a, base_url: 'http://s'}\n",
     {}, "{path}: dependencies[1].name: 'a' is used twice"),
    ("dependencies:\n  - {name: docker-runner, base_url: 'http://r',"
     " retry: {base_delay_ms: 900, max_delay_ms: 100}}\n", {},
     "{path}: dependencies[0].retry.max_delay_ms: must be at least base_delay_ms (900)"),
])
def test_each_problem_is_one_clear_line(tmp_path: Path, text: str, env: dict[str, str],
                                        expected: str) -> None:
    path = write(tmp_path, text)
    lines = problems(path, env)
    wanted = expected.format(path=path)
    assert any(line.startswith(wanted) for line in lines), lines


def test_limits_from_yaml_with_their_bounds_inclusive(tmp_path: Path) -> None:
    path = write(tmp_path, "limits: {max_field_size: 32768, keepalive_timeout_ms: 5000}\n")
    limits = config.load(path, {}).limits
    assert (limits.max_field_size, limits.keepalive_timeout_ms) == (32768, 5000)
    for size in (1024, 1048576):
        path = write(tmp_path, f"limits: {{max_field_size: {size}, keepalive_timeout_ms: 1}}\n")
        limits = config.load(path, {}).limits
        assert (limits.max_field_size, limits.keepalive_timeout_ms) == (size, 1)


def test_the_new_limits_are_file_only_and_wait_for_a_restart() -> None:
    new = {s.key: s for s in settings.SETTINGS
           if s.key in ("limits.max_field_size", "limits.keepalive_timeout_ms")}
    assert len(new) == 2
    assert all(s.env is None and not s.live for s in new.values())


def _ignored(stream: io.StringIO) -> list[dict[str, object]]:
    """The WARNING lines logged, without their time."""
    return [{k: v for k, v in line.items() if k != "time"} for line in log_lines(stream)
            if line["level"] == "WARNING"]


@pytest.mark.parametrize("value", ["true", "false", "null", "maybe", "[1, 2]", "{a: 1}"])
def test_a_file_that_still_sets_fast_path_loads_with_one_warning(
        tmp_path: Path, captured_logs: io.StringIO, value: str) -> None:
    path = write(tmp_path, f"fast_path: {value}\nlisten: {{port: 9003}}\n")
    cfg = config.load(path, {})
    assert cfg.listen.port == 9003
    assert not hasattr(cfg, "fast_path")
    assert "fast_path" not in config.effective(cfg)
    assert _ignored(captured_logs) == [{
        "level": "WARNING", "event": "config_key_ignored", "source": path, "key": "fast_path",
        "message": "fast_path no longer exists: the key has no effect and can be removed"}]


def test_the_fast_path_variable_is_ignored_with_one_warning(
        captured_logs: io.StringIO) -> None:
    assert config.load(None, {"GATEPROXY_FAST_PATH": "false"}) == config.load(None, {})
    assert _ignored(captured_logs) == [{
        "level": "WARNING", "event": "config_key_ignored", "source": "env GATEPROXY_FAST_PATH",
        "key": "fast_path",
        "message": "fast_path no longer exists: GATEPROXY_FAST_PATH has no effect and can be "
                   "removed"}]


def test_a_refused_file_lists_its_problems_only(tmp_path: Path,
                                                captured_logs: io.StringIO) -> None:
    """fast_path is no problem, and a configuration that does not load warns of nothing."""
    path = write(tmp_path, "fast_path: true\nlistne: 1\n")
    (line,) = problems(path, {"GATEPROXY_FAST_PATH": "1"})
    assert line.startswith(f"{path}: listne: unknown key (known keys: ")
    assert "fast_path" not in line
    assert _ignored(captured_logs) == []


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "listne: 1\nlog: {level: LOUD}\n")
    lines = problems(path, {"DOCKER_RUNNER_OPTIONAL": "perhaps"})
    assert len(lines) == 3, lines


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert problems(missing) == [f"{missing}: (document): cannot read the file: "
                                 "No such file or directory"]


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "Yes"])
def test_boolean_words_true(word: str) -> None:
    assert config.load(None, {"DOCKER_RUNNER_OPTIONAL": word}).dependencies[0].optional


@pytest.mark.parametrize("word", ["false", "False", "0", "no", "NO"])
def test_boolean_words_false(word: str) -> None:
    assert not config.load(None, {"DOCKER_RUNNER_OPTIONAL": word}).dependencies[0].optional


def test_secret_is_kept_but_never_shown() -> None:
    cfg = config.load(None, {"DOCKER_RUNNER_SHARED_SECRET": SECRET,
                             "DOCKER_RUNNER_BASE_URL": "http://u:pw@runner:7071"})
    assert cfg.dependencies[0].shared_secret == SECRET
    assert SECRET not in repr(cfg)
    shown = config.effective(cfg)
    assert shown["dependencies"][0]["shared_secret"] == "<redacted>"
    assert shown["dependencies"][0]["base_url"] == "http://runner:7071"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateproxy", *args], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **(env or {})})


def test_check_config_prints_the_effective_config_redacted(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {port: 9002}\n")
    done = run_cli("check-config", "--config", path,
                   env={"DOCKER_RUNNER_SHARED_SECRET": SECRET})
    assert done.returncode == 0, done.stderr
    assert "port: 9002" in done.stdout
    assert "shared_secret: <redacted>" in done.stdout
    assert SECRET not in done.stdout + done.stderr


def test_check_config_on_a_file_with_fast_path_warns_once_and_exits_0(
        tmp_path: Path) -> None:
    path = write(tmp_path, "fast_path: false\nlisten: {port: 9004}\n")
    done = run_cli("check-config", "--config", path)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["listen"]["port"] == 9004 and "fast_path" not in shown
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "config_key_ignored" in warnings[0], done.stderr


def test_check_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "listne: 1\n")
    done = run_cli("check-config", "--config", path, env={"DOCKER_RUNNER_OPTIONAL": "maybe"})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith(f"{path}: listne: unknown key")
    assert lines[1].startswith("env DOCKER_RUNNER_OPTIONAL: dependencies[0].optional: "
                               "must be a boolean (true/false/1/0/yes/no), got 'maybe'")


def test_serve_with_bad_config_exits_2_before_opening_a_port(tmp_path: Path) -> None:
    path = write(tmp_path, "listen: {host: 127.0.0.1, port: 0}\nbogus: 1\n")
    done = run_cli("serve", "--config", path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"{path}: bogus: unknown key")
    assert "listening" not in done.stderr


def test_version() -> None:
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("gateproxy ")


@pytest.mark.parametrize("value", ["0\x1f", "\u0663", "1e3", "0x10", ""])
def test_numbers_are_plain_ascii_digits(value: str) -> None:
    lines = problems(None, {"DOCKER_RUNNER_CONNECT_MAX_RETRIES": value})
    assert lines[0].startswith("env DOCKER_RUNNER_CONNECT_MAX_RETRIES: "
                               "dependencies[0].retry.max_retries: must be a whole number")
