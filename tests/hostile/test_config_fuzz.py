"""The configuration loader under fuzzing.

Whatever the YAML document and the environment, `config.load` returns a Config or raises
ConfigError whose every line is `<source>: <key>: <message>`; never another exception.
`gateproxy check-config` run on generated files exits 0 or 2 without a traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateproxy import config
from gateproxy.config import settings as known_settings

ENV_NAMES = sorted({
    "GATEPROXY_HOST", "GATEPROXY_PORT", "PLATFORM_SERVER_URL", "GATEPROXY_LOG_FORMAT",
    "GATEPROXY_LOG_LEVEL", "DOCKER_RUNNER_BASE_URL", "DOCKER_RUNNER_OPTIONAL",
    "DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS", "DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS",
    "DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS", "DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS",
    "DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS", "DOCKER_RUNNER_CONNECT_MAX_RETRIES",
    "DOCKER_RUNNER_SHARED_SECRET",
})
# Plain scalars YAML resolves to something other than a string, some of which PyYAML
# cannot then build (a 13th month, a hex number without digits, 5000 digits).
TRICKY_SCALARS = [
    "2001-13-45", "2001-02-30 25:61:61", "0x_", "0o8", "0b", "1_000", "1e999", "-.inf", ".nan",
    "~", "null", "yes", "No", "on", "OFF", "y", "=", "<<", "!!binary QUJD", "!!binary @@",
    "!!str 5", "!!int x", "!!float y", "!!timestamp z", "!!python/object:os.system x",
    "&a 1", "*a", "*nowhere", "[1, [2, [3, [4]]]]", "{a: {b: {c: {}}}}", "'unterminated",
    '"\\x00"', '"\\ud800"', "|\n  block", "1" * 5000, "-" + "9" * 5000, "0x" + "f" * 5000,
    "1.5", "65536", "-1", "0", "+8080", " 8080 ", "8080.0", "http://[::1", "http://:80",
    "http://user:pass@host:99999", "/", "//", "/a b", "/a#b", "/a\\b", "/%00", "a: b",
]

_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)  # no lone surrogates
_PLAUSIBLE: st.SearchStrategy[Any] = st.sampled_from([
    0, 1, 80, 8080, 65535, 65536, -1, 2**63, "8080", "x", "", " ", "/", "/api", "/api/x",
    "http://127.0.0.1:3010", "https://u:p@h/", "ftp://h", "http://h?q", "json", "text",
    "INFO", "trace", "bogus", True, False, "true", "no", "maybe", [], {}, None, 1.5,
    float("nan"), float("inf"), "docker-runner", "dockerRunner", "*", "GET", "post", "BREW",
])
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), _TEXT, _PLAUSIBLE,
                    st.sampled_from(TRICKY_SCALARS))
ANY = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(_TEXT, st.integers()), inner,
                                                 max_size=4)), max_leaves=12)
_JUNK_KEYS = st.one_of(_TEXT, st.sampled_from(["a\nb", "x: y", "\x00", "listen ", "LISTEN",
                                               "dependencies[0]", "", " ", "\t"]))


_ROUTES = st.one_of(ANY, st.lists(st.one_of(SCALARS, st.fixed_dictionaries({}, optional={
    "prefix": st.one_of(SCALARS, _PLAUSIBLE),
    "methods": st.one_of(ANY, st.lists(_PLAUSIBLE, max_size=3))})), max_size=3))


def _shaped(schema: Any) -> st.SearchStrategy[Any]:
    """Documents shaped like the configuration (so that validation runs deep), with any
    value in any place and a stray key now and then."""
    if not isinstance(schema, dict):
        return st.one_of(SCALARS, _PLAUSIBLE, ANY)
    known: dict[str, st.SearchStrategy[Any]] = {}
    for key, value in schema.items():
        if key == "dependencies":
            known[key] = st.one_of(st.lists(_shaped(known_settings.entry_defaults()), max_size=3),
                                   ANY)
        elif key == "gated_routes":
            known[key] = _ROUTES
        else:
            known[key] = _shaped(value)
    shaped = st.fixed_dictionaries({}, optional=known)
    with_junk = st.tuples(shaped, st.dictionaries(_JUNK_KEYS, ANY, max_size=2)).map(
        lambda pair: {**pair[1], **pair[0]})
    return st.one_of(shaped, shaped, with_junk, ANY)


DOCUMENTS = _shaped(known_settings.defaults())
ENVS = st.dictionaries(st.sampled_from(ENV_NAMES),
                       st.one_of(_TEXT, st.sampled_from([str(v) for v in TRICKY_SCALARS])),
                       max_size=5)


def _raw_document(data: st.DataObject) -> str:
    """YAML text with a tricky scalar written unquoted where a value goes, so that YAML's
    own resolvers (not just the loader) see it."""
    key = data.draw(st.sampled_from([
        "listen: {{port: {}}}", "upstream: {{url: {}}}", "log: {{level: {}}}",
        "shutdown_delay_ms: {}", "limits: {{max_connections: {}}}", "{}",
        "dependencies: [{{name: docker-runner, base_url: 'http://h', retry: "
        "{{max_retries: {}}}}}]", "cors: {{allow_origins: [{}]}}", "admin_port: {}",
        "dependencies:\n  - name: {}\n    base_url: http://h\n",
    ]))
    return str(key).format(data.draw(st.sampled_from(TRICKY_SCALARS)))


def _check_line(line: str, source: str) -> None:
    assert line.startswith(source + ": "), (line, source)
    rest = line[len(source) + 2:]
    assert re.fullmatch(r"[^\x00-\x1f\x7f]+: [^\x00-\x1f\x7f]+", rest), repr(line)


def assert_loads_or_explains(path: str | None, env: dict[str, str]) -> config.Config | None:
    """Load; a ConfigError must explain itself one problem per line, as
    `<source>: <key>: <message>`, naming a source that exists; anything else raised fails
    the test."""
    error: config.ConfigError | None = None
    try:
        cfg = config.load(path, env)
    except config.ConfigError as exc:
        error = exc
    if error is not None:
        assert error.problems, "a ConfigError lists at least one problem"
        lines = str(error).split("\n")
        assert len(lines) == len(error.problems), lines
        for line, problem in zip(lines, error.problems, strict=True):
            sources = {path or "", "defaults"} | {f"env {name}" for name in env}
            assert problem.source in sources, (problem.source, sources)
            _check_line(line, problem.source)
        return None
    assert isinstance(cfg, config.Config)
    # What check-config prints must be printable too.
    yaml.safe_load(yaml.safe_dump(config.effective(cfg), sort_keys=False))
    return cfg


@given(document=DOCUMENTS, env=ENVS)
@settings(max_examples=600, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_any_document_loads_or_is_explained(document: Any, env: dict[str, str]) -> None:
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        assume(False)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzz.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        assert_loads_or_explains(path, env)


@given(data=st.data(), env=ENVS)
@settings(max_examples=400, deadline=None)
def test_yaml_resolver_oddities_load_or_are_explained(data: st.DataObject,
                                                      env: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "raw.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_raw_document(data))
        assert_loads_or_explains(path, env)


@given(raw=st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_any_bytes_load_or_are_explained(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bytes.yaml")
        with open(path, "wb") as f:
            f.write(raw)
        assert_loads_or_explains(path, {})


@given(env=st.dictionaries(st.sampled_from(ENV_NAMES), st.one_of(
    _TEXT, st.sampled_from(TRICKY_SCALARS), st.integers().map(str)), max_size=8))
@settings(max_examples=500, deadline=None)
def test_any_environment_loads_or_is_explained(env: dict[str, str]) -> None:
    assert_loads_or_explains(None, env)


@pytest.mark.parametrize("scalar", TRICKY_SCALARS)
def test_every_tricky_scalar_in_every_place(scalar: str, tmp_path: Path) -> None:
    for template in ("listen: {{port: {}}}", "upstream: {{url: {}}}", "log: {{level: {}}}",
                     "limits: {{header_timeout_ms: {}}}", "health_path: {}", "{}",
                     "dependencies: [{{name: d, base_url: 'http://h', gated_routes: [{}]}}]"):
        path = tmp_path / "t.yaml"
        path.write_text(template.format(scalar), encoding="utf-8")
        assert_loads_or_explains(str(path), {})
    for name in ENV_NAMES:
        assert_loads_or_explains(None, {name: scalar})


# --- what the fuzzing found, kept as plain regressions ----------------------------------

def _problems(text: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(config.ConfigError) as caught:
        config.load(str(path), {})
    return str(caught.value).split("\n")


def test_a_billion_laughs_is_explained_quickly_and_briefly(tmp_path: Path) -> None:
    """Aliases make a list of 9**9 items from ten lines; a message must not print it."""
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "x:\n" + "".join(f"  {line}\n" for line in levels) + "health_path: *i\n"
    started = time.monotonic()
    lines = _problems(text, tmp_path)
    assert time.monotonic() - started < 2
    assert max(len(line) for line in lines) < 2000, lines


def test_an_unknown_key_with_a_newline_stays_on_one_line(tmp_path: Path) -> None:
    lines = _problems('"a\\nb": 1\n"": 2\n', tmp_path)
    assert len(lines) == 2
    known = ", ".join(sorted(known_settings.file_schema()))
    assert lines[0].endswith(f"unknown key (known keys: {known})")
    assert "workers" in known and "fast_path" not in known
    assert "'a\\nb'" in lines[0] and ": '': " in lines[1]


def test_problems_in_a_dependency_list_name_the_file(tmp_path: Path) -> None:
    """The file's list replaced the defaults' one: none of its problems are 'defaults'."""
    lines = _problems("dependencies:\n  - name: 1_000\n    base_url: http://h\n", tmp_path)
    assert lines and all(line.startswith(str(tmp_path / "r.yaml") + ": ") for line in lines)


def test_a_health_key_that_is_not_a_string_is_an_error(tmp_path: Path) -> None:
    lines = _problems("dependencies: [{name: x, base_url: 'http://h', health_key: 5}]\n",
                      tmp_path)
    assert lines == [f"{tmp_path / 'r.yaml'}: dependencies[0].health_key: "
                     "must be a non-empty string, got 5"]


@pytest.mark.parametrize("text", ["listen: {port: 0x" + "f" * 5000 + "}\n",
                                  "limits: {max_connections: " + "9" * 40 + "}\n",
                                  "shutdown_delay_ms: 1e999\n"])
def test_numbers_too_large_for_any_setting_are_errors(text: str, tmp_path: Path) -> None:
    lines = _problems(text, tmp_path)
    assert len(lines) == 1 and max(len(line) for line in lines) < 300, lines


# --- the real command -------------------------------------------------------------------

def _check_config(path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GATEPROXY_", "DOCKER_RUNNER_", "PLATFORM_SERVER"))}
    return subprocess.run([sys.executable, "-m", "gateproxy", "check-config", "--config", path],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


@given(document=DOCUMENTS, raw=st.data())
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_check_config_exits_0_or_2_without_a_traceback(document: Any,
                                                       raw: st.DataObject) -> None:
    text = (_raw_document(raw) if raw.draw(st.booleans())
            else yaml.safe_dump(document, allow_unicode=True))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cli.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = _check_config(path)
    assert result.returncode in (0, 2), (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    if result.returncode == 2:
        lines = result.stderr.splitlines()
        assert lines
        for line in lines:
            _check_line(line, path)
    else:
        assert isinstance(yaml.safe_load(result.stdout), dict)
