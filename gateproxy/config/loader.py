"""Load and validate the configuration: built-in defaults < YAML file < environment.

The settings themselves (keys, types, defaults, environment variables) are declared
once, in gateproxy/config/settings.py; this module merges the layers, reads every setting with
its reader, adds the checks that span several settings, and builds frozen dataclasses.
Every problem is reported as one line naming its source (the file or the environment
variable), the key and what is wrong, and all of them are collected before giving up,
so that an operator fixes them in one go. A retired key (`settings.RETIRED`) is no
problem: a configuration that sets one loads, with one `config_key_ignored` warning per
source that set it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

import gateproxy.config.readers as r
import gateproxy.config.settings as settings
from gateproxy.config.readers import ConfigError, Path, camel_case
from gateproxy.config.settings import ENV_DEPENDENCY, GRPC_READY_METHOD, LOG_LEVELS, Setting
from gateproxy.core.model import (
    DEFAULTS_SOURCE,
    Config,
    Dependency,
    GatedRoute,
    redact_url,
)
from gateproxy.logs import log

# The gRPC-era runner's listener (platform names): either one, without a base_url from the
# file or DOCKER_RUNNER_BASE_URL, makes docker-runner a `probe: grpc` dependency.
GRPC_HOST_ENV, GRPC_PORT_ENV = "DOCKER_RUNNER_GRPC_HOST", "DOCKER_RUNNER_GRPC_PORT"
GRPC_DEFAULT_HOST, GRPC_DEFAULT_PORT = "127.0.0.1", "50051"
CONFIG_ENV = "GATEPROXY_CONFIG"

__all__ = ["CONFIG_ENV", "DEFAULTS_SOURCE", "ENV_DEPENDENCY", "GRPC_READY_METHOD",
           "LOG_LEVELS", "Config", "ConfigError", "Dependency", "GatedRoute", "camel_case",
           "effective", "load", "redact_url"]


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the effective configuration; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    loader = r.Loader()
    entry = settings.entry_defaults()
    tree: dict[str, Any] = settings.defaults()
    tree["dependencies"] = [
        loader.merge(copy.deepcopy(entry), dep, ("dependencies", i), DEFAULTS_SOURCE, entry,
                     entry)
        for i, dep in enumerate(tree["dependencies"])
    ]
    path = path or env.get(CONFIG_ENV) or None
    source = DEFAULTS_SOURCE
    if path:
        source = path
        document = _read_yaml(path, loader)
        if document is not None:
            document = _drop_retired(document, path, loader)
            tree = loader.merge(tree, document, (), path, settings.file_schema(), entry)
    _ignore_retired_env(env, loader)
    _apply_env(tree, env, loader)
    config = _build(tree, loader, source)
    if loader.problems or config is None:
        raise ConfigError(loader.problems)
    # Only once it loads: a refused configuration's output stays one line per problem.
    for ignored in loader.ignored:
        log.warning("config_key_ignored", source=ignored.source, key=ignored.key,
                    message=ignored.message)
    return config


def _drop_retired(document: dict[Any, Any], path: str, loader: r.Loader) -> dict[Any, Any]:
    """The document without the retired keys, each noted as ignored (whatever its value)."""
    kept = dict(document)
    for retired in settings.RETIRED:
        if retired.key in kept:
            del kept[retired.key]
            loader.ignore((retired.key,), f"{retired.key} no longer exists: the key has no "
                                          "effect and can be removed", path)
    return kept


def _ignore_retired_env(env: Mapping[str, str], loader: r.Loader) -> None:
    for retired in settings.RETIRED:
        if retired.env is not None and retired.env in env:
            loader.ignore((retired.key,), f"{retired.key} no longer exists: {retired.env} "
                                          "has no effect and can be removed",
                          f"env {retired.env}")


def _read_yaml(path: str, loader: r.Loader) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        loader.problem((), f"cannot read the file: {exc.strerror or exc}", path)
        return None
    except UnicodeDecodeError:
        loader.problem((), "is not UTF-8 text", path)
        return None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        loader.problem((), f"is not valid YAML{at}: {what}", path)
        return None
    except RecursionError:
        loader.problem((), "is not valid YAML: nested too deeply", path)
        return None
    except Exception as exc:
        # PyYAML's constructors raise ValueError, AttributeError... for values its
        # resolvers accepted (`2001-13-45`, `0x_`, `!!int x`, 5000 digits).
        what = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        loader.problem((), f"is not valid YAML: {what}", path)
        return None
    if document is None:
        return {}
    if not isinstance(document, dict):
        loader.problem((), f"must be a mapping at the top level, got {r.kind(document)}", path)
        return None
    return document


def _apply_env(tree: dict[str, Any], env: Mapping[str, str], loader: r.Loader) -> None:
    """Environment variables over the file: top-level ones, and for the dependency named
    docker-runner its own (the secret included)."""
    deps = tree.get("dependencies")
    entries = [(i, dep) for i, dep in enumerate(deps if isinstance(deps, list) else [])
               if isinstance(dep, dict) and dep.get("name") == ENV_DEPENDENCY]
    for name, setting in settings.environment():
        if name not in env:
            continue
        targets = ([(dep, ("dependencies", i)) for i, dep in entries]
                   if setting.per_dependency else [(tree, ())])
        for node, at in targets:
            for part in setting.path[:-1]:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            node[setting.path[-1]] = env[name]
            loader.origins[(*at, *setting.path)] = f"env {name}"
    for i, dep in entries:
        _apply_grpc_env(dep, ("dependencies", i), env, loader)


def _apply_grpc_env(dep: dict[str, Any], path: Path, env: Mapping[str, str],
                    loader: r.Loader) -> None:
    """DOCKER_RUNNER_GRPC_HOST/PORT: `probe: grpc` at grpc://host:port, unless a base_url
    was given (by the file or DOCKER_RUNNER_BASE_URL), which wins."""
    names = [name for name in (GRPC_HOST_ENV, GRPC_PORT_ENV) if name in env]
    given = dep.get("base_url") is not None and loader.origin((*path, "base_url")) != "defaults"
    if not names or given:
        return
    host = env.get(GRPC_HOST_ENV, GRPC_DEFAULT_HOST).strip()
    port = env.get(GRPC_PORT_ENV, GRPC_DEFAULT_PORT).strip()
    source = f"env {' and '.join(names)}"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    if not host or not re.fullmatch(r"[A-Za-z0-9._\-\[\]:%]+", host):
        loader.problem((*path, "base_url"),
                       f"{GRPC_HOST_ENV} must be a host name or address, got {r.show(host)}",
                       f"env {GRPC_HOST_ENV}")
        return
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535):
        loader.problem((*path, "base_url"),
                       f"{GRPC_PORT_ENV} must be a port number (1-65535), got {r.show(port)}",
                       f"env {GRPC_PORT_ENV}")
        return
    dep["probe"] = "grpc"
    dep["base_url"] = f"grpc://{host}:{int(port)}"
    loader.origins[(*path, "probe")] = loader.origins[(*path, "base_url")] = source



def _value(node: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _read(loader: r.Loader, node: Any, at: Path, setting: Setting) -> Any:
    assert setting.read is not None
    return setting.read(loader, (*at, *setting.path), _value(node, setting.path))


def _make(cls: type[Any], values: dict[tuple[str, ...], Any], at: tuple[str, ...] = ()) -> Any:
    """An instance of dataclass `cls` from values keyed by setting path: each field is a
    setting, or a dataclass of settings one level down."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for fld in dataclasses.fields(cls):
        key = (*at, fld.name)
        if key in values:
            kwargs[fld.name] = values[key]
        elif dataclasses.is_dataclass(hints[fld.name]):
            kwargs[fld.name] = _make(hints[fld.name], values, key)
    return cls(**kwargs)


def _build(tree: dict[str, Any], loader: r.Loader, source: str) -> Config | None:
    values = {s.path: _read(loader, tree, (), s) for s in settings.top_level()}
    listen_port, admin_port = values[("listen", "port")], values[("admin_port",)]
    if admin_port and admin_port == listen_port:
        loader.problem(("admin_port",), f"must differ from listen.port ({listen_port})")
    if values[("admin_prefix",)] is not None:
        prefix = values[("admin_prefix",)].rstrip("/")
        if not prefix:
            loader.problem(("admin_prefix",), "must not be '/' (it would hide every route)")
        values[("admin_prefix",)] = prefix
    values[("health_path",)] = (values[("health_path",)] or "/").rstrip("/") or "/"
    dependencies = tuple(
        d for d in (_dependency(loader, dep, i) for i, dep in
                    enumerate(tree["dependencies"] or []))
        if d is not None)
    _check_unique(loader, dependencies)
    if loader.problems:
        return None
    values[("dependencies",)] = dependencies
    values[("source",)] = source
    config: Config = _make(Config, values)
    return config


def _dependency(loader: r.Loader, dep: Any, i: int) -> Dependency | None:
    at: Path = ("dependencies", i)
    if not isinstance(dep, dict):
        return None  # merge() already reported it
    before = len(loader.problems)
    values = {s.path: _read(loader, dep, at, s) for s in settings.per_dependency()
              if s.read is not None}
    name = values[("name",)]
    if values[("health_key",)] is None and name:
        values[("health_key",)] = camel_case(name)
    # Without a usable name the entry is already rejected: no second line for it.
    label = name or "dependency"
    snake = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    values[("not_ready", "code")] = values[("not_ready", "code")] or f"{snake}_not_ready"
    values[("not_ready", "message")] = values[("not_ready", "message")] or f"{label} not ready"
    retry = (values[("retry", "base_delay_ms")], values[("retry", "max_delay_ms")])
    if None not in retry and retry[1] < retry[0]:
        loader.problem((*at, "retry", "max_delay_ms"),
                       f"must be at least base_delay_ms ({retry[0]}), got {retry[1]}")
    (values[("base_url",)], values[("ready_path",)],
     values[("health_service",)]) = _probe_target(loader, dep, at, values[("probe",)])
    if len(loader.problems) != before:
        return None
    built: Dependency = _make(Dependency, values)
    return built


def _probe_target(loader: r.Loader, dep: dict[str, Any], path: Path, probe: str | None
                  ) -> tuple[Any, Any, Any]:
    """base_url, ready_path and health_service, checked against the probe kind (like the
    readers, None after recording a problem)."""
    raw_url, raw_path = dep.get("base_url"), dep.get("ready_path")
    health_service = dep.get("health_service")
    scheme = raw_url.strip().partition("://")[0].lower() if isinstance(raw_url, str) else ""
    if probe == "grpc":
        base_url = r.grpc_url(loader, (*path, "base_url"), raw_url)
        ready_path = (settings.GRPC_READY_METHOD if raw_path is None
                      else r.grpc_method(loader, (*path, "ready_path"), raw_path))
        if health_service is not None:
            if not isinstance(health_service, str) or not (
                    health_service == "" or health_service.isprintable()):
                loader.problem((*path, "health_service"),
                               f"must be a gRPC service name (a string), got "
                               f"{r.show(health_service)}")
            elif raw_path is not None:
                loader.problem((*path, "health_service"),
                               "calls grpc.health.v1.Health/Check instead of ready_path: "
                               "set one of the two")
        return base_url, ready_path, health_service
    if probe == "http" and scheme in ("grpc", "grpcs"):
        loader.problem((*path, "base_url"),
                       f"{scheme}:// needs probe: grpc (the probe is http), got "
                       f"{r.show(redact_url(str(raw_url)))}")
        base_url = None
    else:
        base_url = r.http_url(loader, (*path, "base_url"), raw_url)
    ready_path = (settings.HTTP_READY_PATH if raw_path is None
                  else r.abs_path(loader, (*path, "ready_path"), raw_path))
    if probe == "http" and health_service is not None:
        loader.problem((*path, "health_service"), "needs probe: grpc (the probe is http)")
    return base_url, ready_path, None


def _check_unique(loader: r.Loader, deps: tuple[Dependency, ...]) -> None:
    for attr in ("name", "health_key"):
        seen: set[str] = set()
        for i, dep in enumerate(deps):
            value = getattr(dep, attr)
            if value in seen:
                loader.problem(("dependencies", i, attr), f"{r.show(value)} is used twice")
            seen.add(value)


def _shown(obj: Any, of: Iterable[Setting]) -> dict[str, Any]:
    """The settings `of` of a Config or a Dependency, nested as in the file, each as
    check-config shows it."""
    out: dict[str, Any] = {}
    for s in of:
        value = obj
        for part in s.path:
            value = getattr(value, part)
        node = out
        for part in s.path[:-1]:
            node = node.setdefault(part, {})
        node[s.path[-1]] = s.show(value)
    return out


def effective(config: Config) -> dict[str, Any]:
    """The configuration as plain data, secrets redacted: what check-config prints."""
    top = _shown(config, settings.top_level())
    top["dependencies"] = [_shown(d, settings.per_dependency()) for d in config.dependencies]
    # In the order of the settings (and of the file), the dependencies in their place.
    order = dict.fromkeys("dependencies" if s.per_dependency else s.path[0]
                          for s in settings.SETTINGS)
    return {"source": config.source, **{key: top[key] for key in order}}
