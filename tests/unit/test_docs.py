"""docs/configuration.md is not stale: every key `gateproxy check-config` prints is in it
with its real default, every environment variable the code reads is in it and sets the
key it says, and its live-reload column is what gateproxy/serve/reload.py does."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateproxy import config
from gateproxy.config import settings
from gateproxy.serve.reload import _keep_restart_only

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
# Where gateproxy reads environment variables (the image's own are in deploy/README.md).
ENV_SOURCES = sorted((ROOT / "gateproxy").rglob("*.py"))
ENV_NAME = re.compile(r'"((?:GATEPROXY|DOCKER_RUNNER|PLATFORM_SERVER|AIOHTTP)_[A-Z0-9_]+)"')
OWN_ENV = re.compile(r"^(GATEPROXY_|DOCKER_RUNNER_|PLATFORM_SERVER_URL$)")
DEP = "dependencies[]"
# The secrets: set by the environment only, shown `<redacted>`.
SECRETS = {s.key for s in settings.SETTINGS if not s.in_file}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not OWN_ENV.match(k)}
    env.update(extra)
    return env


def check_config(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "gateproxy", "check-config"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    data = yaml.safe_load(done.stdout)
    assert isinstance(data, dict)
    return data


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """`a.b` -> value; the dependency entries as `dependencies[].key` (the first entry)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        if key == "dependencies" and not prefix:
            assert value, "check-config printed no dependency"
            out.update(leaves(value[0], DEP))
        elif isinstance(value, dict):
            out.update(leaves(value, path))
        else:
            out[path] = value
    return out


def effective_defaults() -> dict[str, Any]:
    values = leaves(check_config(clean_env()))
    assert values.pop("source") == "defaults"
    return values


def shown(value: Any) -> str:
    """A value as the doc writes it: check-config's YAML, lists in flow style."""
    if isinstance(value, list):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def doc_rows() -> dict[str, dict[str, str]]:
    """The key table: key -> its cells by column name."""
    lines = DOC.read_text().splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| Key |")))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip()[1:-1].split("|")]
        assert len(cells) == len(columns), f"docs/configuration.md: malformed row {line!r}"
        key = cells[0].strip("`")
        assert key not in rows, f"docs/configuration.md: {key} twice"
        rows[key] = dict(zip(columns, cells, strict=True))
    return rows


def test_every_key_is_documented_with_its_default() -> None:
    defaults = effective_defaults()
    rows = doc_rows()
    missing = sorted(set(defaults) - set(rows))
    assert not missing, f"docs/configuration.md lacks {missing}"
    for key, value in defaults.items():
        cell = rows[key]["Default"]
        assert f"`{shown(value)}`" in cell, f"{key}: the default is `{shown(value)}`, the doc " \
                                             f"says {cell}"
    stale = sorted(set(rows) - set(defaults) - {"dependencies"})
    assert not stale, f"docs/configuration.md documents keys that do not exist: {stale}"


def test_the_settings_table_is_generated_from_the_settings() -> None:
    """docs/configuration.md's table is `settings.markdown()`: `make docs` rewrites it."""
    doc = DOC.read_text()
    table = doc.partition(settings.BEGIN)[2].partition(settings.END)[0]
    assert table.strip() == settings.markdown().strip(), "stale: run `make docs`"


def test_every_setting_is_declared_once_and_fills_one_field() -> None:
    keys = [s.key for s in settings.SETTINGS]
    assert len(keys) == len(set(keys))
    top = {".".join(s.path) for s in settings.top_level()}
    per_dep = {".".join(s.path) for s in settings.per_dependency()}
    assert top == _leaves(config.Config) - {"source", "dependencies"}
    assert per_dep == _leaves(config.Dependency)


def _leaves(cls: type) -> set[str]:
    """The dotted names of a config dataclass's fields, nested dataclasses opened."""
    hints = typing.get_type_hints(cls)
    out = set()
    for fld in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[fld.name]):
            out |= {f"{fld.name}.{leaf}" for leaf in _leaves(hints[fld.name])}
        else:
            out.add(fld.name)
    return out


def test_every_environment_variable_is_documented() -> None:
    doc = DOC.read_text()
    names = {n for path in ENV_SOURCES for n in ENV_NAME.findall(path.read_text())}
    assert {"GATEPROXY_CONFIG", "DOCKER_RUNNER_SHARED_SECRET", "PLATFORM_SERVER_URL"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in doc)
    assert not missing, f"docs/configuration.md does not mention {missing}"


# A value unlike the default for each kind of key an environment variable can set.
_OTHER = {"listen.host": "127.0.0.2", "log.format": "text", "log.level": "DEBUG",
          "workers": "3",
          f"{DEP}.optional": "false", f"{DEP}.shared_secret": "s3cret"}


def test_each_documented_variable_sets_its_key() -> None:
    """All the documented variables at once, each to another value: every key moves."""
    rows = {k: r for k, r in doc_rows().items() if r["Environment"]}
    env: dict[str, str] = {}
    for key, row in rows.items():
        var = row["Environment"].strip("`")
        if key in _OTHER:
            env[var] = _OTHER[key]
        elif key.endswith("url"):
            env[var] = "http://127.0.0.9:4321"
        else:
            env[var] = "4321"
    # The dependency variables apply to the entry named docker-runner.
    assert all(k.startswith(DEP) for k in rows if k.endswith(("_ms", "_retries")))
    values = leaves(check_config(clean_env(**env)))
    for key, row in rows.items():
        expected = env[row["Environment"].strip("`")]
        if key in SECRETS:
            expected = "<redacted>"
        assert shown(values[key]).lower() == expected.lower(), (
            f"{row['Environment']}={env[row['Environment'].strip('`')]} did not set {key}")


def test_reload_column_matches_what_a_reload_applies(tmp_path: Path) -> None:
    """Change every key at once: the reload keeps exactly the keys documented `restart`."""
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({
        "listen": {"host": "127.0.0.2", "port": 8181},
        "upstream": {"url": "http://127.0.0.9:4321", "connect_timeout_ms": 4321,
                     "read_timeout_ms": 4321, "retry_connect_ms": 4321,
                     "retry_max_requests": 77, "health_timeout_ms": 4321},
        "workers": 3,
        "health_path": "/healthz", "admin_prefix": "/_gp", "admin_port": 9911,
        "log": {"format": "text", "level": "DEBUG", "access": True},
        "limits": {"max_connections": 77, "header_timeout_ms": 4321,
                   "max_field_size": 4321, "keepalive_timeout_ms": 4321},
        "shutdown_delay_ms": 4321, "shutdown_grace_ms": 4321,
        "cors": {"allow_origins": ["https://app.example"]},
        "dependencies": [{"name": "docker-runner", "base_url": "http://127.0.0.9:7071"}],
    }))
    running = config.load(None, {})
    # The secrets change too: they come from the environment, and wait as well.
    new = config.load(str(changed), {"DOCKER_RUNNER_SHARED_SECRET": "changed",
                                     "GATEPROXY_ADMIN_TOKEN": "changed"})
    applied, pending = _keep_restart_only(running, new)
    # The real values (content() would redact the secrets), of docker-runner's entry for
    # a setting of each dependency.
    kept = {s.key for s in settings.SETTINGS if _value(new, s) != _value(applied, s)}
    rows = doc_rows()
    documented = {k for k, r in rows.items() if r["Reload"] == "restart"}
    assert {f"{DEP}.shared_secret", "admin_token"} == SECRETS
    assert documented == kept
    # Each reported, in the order of the settings, a dependency's under its name.
    assert [key.replace("[docker-runner]", "[]") for key in pending] == [
        s.key for s in settings.SETTINGS if s.key in kept]
    assert {r["Reload"] for r in rows.values()} == {"live", "restart"}


def _value(cfg: config.Config, setting: settings.Setting) -> Any:
    value: Any = cfg.dependencies[0] if setting.per_dependency else cfg
    for part in setting.path:
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("doc", ["configuration.md", "operations.md"])
def test_readme_links_the_doc(doc: str) -> None:
    assert f"(docs/{doc})" in (ROOT / "README.md").read_text()


# ==========================================================================================
# docs/operations.md
# ==========================================================================================

OPERATIONS = ROOT / "docs" / "operations.md"
_LOG_CALL = re.compile(
    r'\blog(?:\.opt\((?:[^()]|\([^()]*\))*\))?'  # log.opt(...), one level of nesting
    r'\.(?:trace|debug|info|success|warning|error|critical)\(\s*'
    r'"([a-z_]+)"|\blog\.log\(\s*[^,]+,\s*"([a-z_]+)"')


def test_every_log_event_is_explained() -> None:
    events = {name for path in (ROOT / "gateproxy").rglob("*.py")
              for match in _LOG_CALL.finditer(path.read_text()) for name in match.groups()
              if name}
    assert {"probe_failed", "retries_exhausted", "access", "client_limits", "request_error",
            "monitor_error"} <= events
    doc = OPERATIONS.read_text()
    missing = sorted(e for e in events if f"`{e}`" not in doc)
    assert not missing, f"docs/operations.md does not explain the log events {missing}"


def test_every_metric_is_explained() -> None:
    source = (ROOT / "gateproxy" / "views" / "metrics.py").read_text()
    names = set(re.findall(r'"(gateproxy_[a-z_]+)"', source))
    assert "gateproxy_dependency_up" in names
    doc = OPERATIONS.read_text()
    # Counters are exposed with `_total`, as the doc names them.
    missing = sorted(n for n in names if f"`{n}`" not in doc and f"`{n}_total`" not in doc)
    assert not missing, f"docs/operations.md does not explain the metrics {missing}"


def anchors(markdown: str) -> set[str]:
    """Heading anchors as GitHub makes them."""
    return {re.sub(r"[^a-z0-9 _-]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in markdown.splitlines() if line.startswith("#")}


def test_alert_runbook_links_resolve() -> None:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "gateproxy-alerts.yaml")
                           .read_text())
    targets = anchors(OPERATIONS.read_text())
    doc = OPERATIONS.read_text()
    for group in rules["groups"]:
        for rule in group["rules"]:
            path, _, anchor = rule["annotations"]["runbook"].partition("#")
            assert path == "docs/operations.md", rule["alert"]
            assert anchor in targets, f"{rule['alert']}: no heading for #{anchor}"
            assert f"`{rule['alert']}`" in doc, f"operations.md lacks {rule['alert']}"
