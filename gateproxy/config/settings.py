"""Every configuration setting, named once: key, reader (its type and checks), default,
environment variable, whether a reload applies it live, and what it does.

The YAML schema (which keys exist), the built-in defaults, the environment table,
`check-config`'s output and the table in docs/configuration.md are all derived from
`SETTINGS`; gateproxy/config/loader.py reads them, builds the dataclasses and adds the checks
that span several settings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import gateproxy.config.readers as r
from gateproxy.core.answers import GRPC_CODES
from gateproxy.core.model import GatedRoute, redact_url

DEP: Final = "dependencies[]."  # the key prefix of a setting of each dependency
ENV_DEPENDENCY: Final = "docker-runner"  # the dependency the DOCKER_RUNNER_* variables set
LOG_LEVELS: Final = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
PROBE_KINDS: Final = ("http", "grpc")
HTTP_READY_PATH: Final = "/v1/ready"
GRPC_READY_METHOD: Final = "/agynio.api.runner.v1.RunnerService/Ready"
_SAME: Final = object()  # `builtin` when the built-in docker-runner has the default


def _show_same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # dotted; `dependencies[].` for a setting of each dependency
    read: r.Reader | None  # None: read by config.py with the settings it depends on
    default: Any  # for a dependency: in an entry of your own (None: required or derived)
    kind: str  # the type, as the docs say it
    doc: str
    live: bool = True  # a reload applies it; False: it waits for a restart
    env: str | None = None
    builtin: Any = _SAME  # for a dependency: in the built-in docker-runner entry
    default_doc: str | None = None  # the Default column, where the value says too little
    show: Callable[[Any], Any] = _show_same  # how check-config prints the value
    in_file: bool = True  # False: environment only (a secret)

    @property
    def path(self) -> tuple[str, ...]:
        """The key's path inside a dependency entry, or in the document."""
        return tuple(self.key.removeprefix(DEP).split("."))

    @property
    def per_dependency(self) -> bool:
        return self.key.startswith(DEP)

    @property
    def builtin_value(self) -> Any:
        return self.default if self.builtin is _SAME else self.builtin


def _routes_shown(routes: tuple[GatedRoute, ...]) -> list[Any]:
    return [route.prefix if route.methods is None
            else {"prefix": route.prefix, "methods": sorted(route.methods)}
            for route in routes]


_MS = r.integer(0)
_POSITIVE_MS = r.integer(1)
_PORT = r.integer(0, 65535)  # 0: any free port (tests, demos); the log says which

SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("listen.host", r.string, "0.0.0.0", "string",
            "Address the proxy (and the admin port) listens on.",
            live=False, env="GATEPROXY_HOST"),
    Setting("listen.port", _PORT, 8080, "integer 0–65535",
            "Proxy port; 0 takes any free port (the `listening` log line says which).",
            live=False, env="GATEPROXY_PORT"),
    Setting("upstream.url", r.http_url, "http://127.0.0.1:3010", "http(s) URL",
            "The platform-server every non-gated request is forwarded to.",
            live=False, env="PLATFORM_SERVER_URL", show=redact_url),
    Setting("upstream.connect_timeout_ms", _POSITIVE_MS, 5000, "integer ≥ 1",
            "Connecting to the upstream; past it the client gets 502 "
            "`upstream_unavailable`.", live=False),
    Setting("upstream.read_timeout_ms", _MS, 300000, "integer ≥ 0",
            "Longest silence from the upstream, before or within a response (0: none); "
            "no headers in time gives 504 `upstream_timeout`.", live=False),
    Setting("upstream.retry_connect_ms", _MS, 3000, "integer ≥ 0",
            "A request whose upstream connection is refused (or reset before any of it "
            "was sent) is tried again on a new connection, 25 ms doubling to 400 ms apart "
            "(at most half of this), for up to this long, then gets 502 "
            "`upstream_unavailable`. While the upstream is down the waiting requests make "
            "one attempt at a time. 0: off, the 502 at once.", live=False),
    Setting("upstream.retry_max_requests", r.integer(1), 100, "integer ≥ 1",
            "Requests waiting for the upstream at once (`retry_connect_ms`); past it the "
            "502 comes at once.", live=False),
    Setting("upstream.health_timeout_ms", _POSITIVE_MS, 2000, "integer ≥ 1",
            "How long `health_path` waits for the platform-server's own `/health`."),
    Setting("workers", r.workers, 1, "integer 1–64, or `auto`",
            "Processes serving the proxy's port (SO_REUSEPORT); above 1 a supervisor probes "
            "once for all and serves the admin endpoints. `auto`: the CPUs this process may "
            "use (its cgroup's CPU limit counts).", live=False, env="GATEPROXY_WORKERS"),
    Setting("health_path", r.abs_path, "/health", "path",
            "Answered by gateproxy: the platform-server's health plus each dependency's "
            "state.", live=False),
    Setting("admin_prefix", r.abs_path, "/_gateproxy", "path, not `/`",
            "Prefix of `live`, `ready`, `status`, `status.json` and `metrics`; any other "
            "path under it is answered 404 by gateproxy, never forwarded.", live=False),
    Setting("admin_port", r.optional(_PORT), None, "integer 0–65535 or null",
            "Serve the admin endpoints on this port only; null: on the proxy port. Must "
            "differ from `listen.port`.", live=False),
    Setting("admin_token", r.secret, None, "secret, environment only",
            "The admin endpoints that change state (`POST`/`DELETE` "
            "`dependencies/{name}/maintenance` on `admin_port`) require `Authorization: "
            "Bearer <token>` from every caller when set, and accept only callers on the "
            "loopback when not. Never in a file, never printed (`<redacted>`) or logged.",
            live=False, env="GATEPROXY_ADMIN_TOKEN", in_file=False,
            show=lambda secret: "<redacted>" if secret else None),
    Setting("log.format", r.choice("json", "text"), "json", "`json` or `text`",
            "One JSON object per line on stderr, or plain text for people.",
            env="GATEPROXY_LOG_FORMAT"),
    Setting("log.level", r.choice(*LOG_LEVELS, upper=True), "INFO",
            " ".join(f"`{level}`" for level in LOG_LEVELS),
            "Lowest level logged (any case).", env="GATEPROXY_LOG_LEVEL"),
    Setting("log.access", r.boolean, False, "boolean",
            "One `access` log line per request; a change applies to connections opened "
            "afterwards."),
    Setting("limits.max_connections", r.integer(1), 10000, "integer ≥ 1",
            "Open connections per listener; beyond it new clients wait in the kernel's "
            "backlog.", live=False),
    Setting("limits.header_timeout_ms", _POSITIVE_MS, 30000, "integer ≥ 1",
            "A request head must arrive within this; a request body may not stall longer "
            "(408 / abort).", live=False),
    Setting("limits.max_field_size", r.integer(1024, 1048576), 16384,
            "integer 1024–1048576",
            "Longest header line (name plus value, in bytes) a client may send on the proxy "
            "port.", live=False),
    Setting("limits.keepalive_timeout_ms", _POSITIVE_MS, 75000, "integer ≥ 1",
            "How long an idle client keep-alive connection on the proxy port stays open.",
            live=False),
    Setting("shutdown_delay_ms", _MS, 5000, "integer ≥ 0",
            "After SIGTERM: `ready` answers 503 while everything else is still served for "
            "this long."),
    Setting("shutdown_grace_ms", _MS, 20000, "integer ≥ 0",
            "Then the listeners close and in-flight requests get this long to finish.",
            live=False),
    Setting(f"{DEP}name", r.name, None, "string: letters, digits, `-` `_` `.`",
            "Unique name, used in logs, metrics (`dependency` label) and the status page. "
            "Required in an entry of your own.", builtin=ENV_DEPENDENCY),
    Setting(f"{DEP}health_key", r.optional(r.string), None, "string",
            "Key under `dependencies` in the `/health` answer; default: the name in "
            "camelCase.", builtin="dockerRunner"),
    Setting(f"{DEP}probe", r.choice(*PROBE_KINDS), "http", "`http` or `grpc`",
            "How readiness is asked: `GET base_url + ready_path` (2xx is ready), or a "
            "unary gRPC call (OK is ready). `DOCKER_RUNNER_GRPC_HOST` or "
            "`DOCKER_RUNNER_GRPC_PORT` without a `base_url` make docker-runner `grpc`."),
    Setting(f"{DEP}base_url", None, None, "http(s) URL; `grpc://` or `grpcs://` host:port",
            "Where the dependency is; credentials in it are never printed. Required in an "
            "entry of your own.", env="DOCKER_RUNNER_BASE_URL",
            builtin="http://127.0.0.1:7071", show=redact_url),
    Setting(f"{DEP}ready_path", None, None, "path; for `grpc` a full method path",
            "The readiness call: a path for `http`, `/package.Service/Method` for `grpc`.",
            default_doc=f"`{HTTP_READY_PATH}`; `grpc`: `{GRPC_READY_METHOD}`"),
    Setting(f"{DEP}health_service", None, None, "string or null",
            "`grpc` only: ask `grpc.health.v1.Health/Check` about this service (`\"\"`: the "
            "whole server; `SERVING` is ready) instead of calling `ready_path`."),
    Setting(f"{DEP}optional", r.boolean, True, "boolean",
            "`false`: gateproxy exits 1 at start while it is not ready, and `ready` answers "
            "503 while it is down.", env="DOCKER_RUNNER_OPTIONAL"),
    Setting(f"{DEP}probe_interval_ms", r.integer(1), 30000, "integer ≥ 1",
            "Time between probes while the dependency is up.",
            env="DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS"),
    Setting(f"{DEP}probe_timeout_ms", r.integer(1), 2000, "integer ≥ 1",
            "A probe slower than this fails (`timeout`).",
            env="DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS"),
    Setting(f"{DEP}healthy_threshold", r.integer(1, 100), 1, "integer 1–100",
            "Consecutive successes needed to turn up."),
    Setting(f"{DEP}unhealthy_threshold", r.integer(1, 100), 1, "integer 1–100",
            "Consecutive failures needed to turn down (damps flapping)."),
    Setting(f"{DEP}retry.base_delay_ms", r.integer(1), 500, "integer ≥ 1",
            "First retry delay after a failure, doubled after each further failure ...",
            env="DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS"),
    Setting(f"{DEP}retry.max_delay_ms", r.integer(1), 30000, "integer ≥ `base_delay_ms`",
            "... up to this.", env="DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS"),
    Setting(f"{DEP}retry.jitter_ms", r.integer(0), 250, "integer ≥ 0",
            "A random 0..jitter added to every retry delay, so that replicas drift apart.",
            env="DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS"),
    Setting(f"{DEP}retry.max_retries", r.integer(0), 0, "integer ≥ 0",
            "Stop probing after this many consecutive failures (0: never); a reload starts "
            "again.", env="DOCKER_RUNNER_CONNECT_MAX_RETRIES"),
    Setting(f"{DEP}gated_routes", r.gated_routes, [],
            "list of path prefixes, or `{prefix, methods}`",
            "Requests answered 503 while the dependency is not up; `methods` limits a "
            "prefix to those HTTP methods (GET gates HEAD too). An entry of your own: `[]`.",
            builtin=["/api/containers"], show=_routes_shown),
    Setting(f"{DEP}recheck_on_status", r.status_codes, [502, 503, 504],
            "list of HTTP status codes",
            "A forwarded request on a gated route answered with one of these (while the "
            "dependency is up) triggers a probe at once: at most one in flight and one per "
            "second. `[]`: off.", show=sorted),
    Setting(f"{DEP}hold_ms", _MS, 0, "integer ≥ 0",
            "While the dependency is down, a gated request waits up to this long for it to "
            "come back before it gets the 503 (0: off, the 503 at once)."),
    Setting(f"{DEP}hold_max_requests", r.integer(1), 100, "integer ≥ 1",
            "Requests held at once (`hold_ms`); past it the 503 comes at once."),
    Setting(f"{DEP}not_ready.code", r.optional(r.string), None, "string",
            "`error.code` of the gated 503; default: the name in snake case + "
            "`_not_ready`.", builtin="docker_runner_not_ready"),
    Setting(f"{DEP}not_ready.message", r.optional(r.string), None, "string",
            "`error.message` of the gated 503; default: the name + ` not ready`.",
            builtin="docker-runner not ready"),
    Setting(f"{DEP}not_ready.grpc_code", r.choice(*GRPC_CODES, upper=True), "UNAVAILABLE",
            "gRPC status name",
            "The status of a gated gRPC, gRPC-Web or Connect call (its Connect code and "
            "HTTP status follow from it, docs/gate.md): a gRPC status name such as "
            "`UNAVAILABLE` or `RESOURCE_EXHAUSTED`."),
    Setting(f"{DEP}shared_secret", r.secret, None, "secret, environment only",
            "Signs the probe of `docker-runner` as the platform-server signs its calls. "
            "Never in a file, never printed (`<redacted>`) or logged.",
            live=False, env="DOCKER_RUNNER_SHARED_SECRET", in_file=False,
            show=lambda secret: "<redacted>" if secret else None),
    Setting("cors.allow_origins", r.string_set, [], "list of origins",
            "Origins whose browsers may read a gated 503 (`\"*\"`: any).",
            default_doc="`[]`", show=sorted),
)


@dataclass(frozen=True, slots=True)
class Retired:
    """A top-level key that no longer exists. A file (or its environment variable) that
    still sets it loads: the value has no effect, and each source setting it gets one
    `config_key_ignored` warning instead of an `unknown key` problem."""

    key: str
    env: str | None = None


RETIRED: Final[tuple[Retired, ...]] = (
    Retired("fast_path", env="GATEPROXY_FAST_PATH"),
)
DEPENDENCIES_DOC: Final = (
    "The services gateproxy probes; each gates its own routes. A list in the file "
    "replaces the built-in one; entries can be added, changed or removed live.")


def _nest(pairs: Iterator[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in pairs:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = copy.deepcopy(value)
    return tree


def top_level() -> Iterator[Setting]:
    return (s for s in SETTINGS if not s.per_dependency)


def per_dependency() -> Iterator[Setting]:
    return (s for s in SETTINGS if s.per_dependency)


def defaults() -> dict[str, Any]:
    """The built-in document: every top-level default and the docker-runner entry."""
    tree = _nest((s.path, s.default) for s in top_level())
    builtin = _nest((s.path, s.builtin_value) for s in per_dependency() if s.in_file)
    tree["dependencies"] = [builtin]
    return tree


def entry_defaults() -> dict[str, Any]:
    """A dependency entry of your own, before its file and environment values."""
    return _nest((s.path, s.default) for s in per_dependency() if s.in_file)


def file_schema() -> dict[str, Any]:
    """The keys a file may have (a leaf's value here is only a marker)."""
    return {**_nest((s.path, None) for s in top_level() if s.in_file), "dependencies": None}


def environment() -> tuple[tuple[str, Setting], ...]:
    """(variable, setting) for every setting an environment variable sets."""
    return tuple((s.env, s) for s in SETTINGS if s.env is not None)


# --- docs/configuration.md --------------------------------------------------------------

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def _code(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | frozenset):
        return f"`[{', '.join(map(str, value))}]`"
    return f"`{value}`"


def markdown() -> str:
    """The table of every setting, and the retired keys, as docs/configuration.md has
    them."""
    rows = ["| Key | Type | Default | Environment | Reload | Description |",
            "| --- | --- | --- | --- | --- | --- |"]

    def row(key: str, kind: str, default: str, env: str | None, live: bool,
            doc: str) -> None:
        rows.append(f"| `{key}` | {kind} | {default} | {f'`{env}`' if env else ''} | "
                    f"{'live' if live else 'restart'} | {doc} |")

    for s in SETTINGS:
        if s.key == f"{DEP}name":
            row("dependencies", "list", f"one entry, `{ENV_DEPENDENCY}`", None, True,
                DEPENDENCIES_DOC)
        default = s.default_doc or _code(s.builtin_value)
        row(s.key, s.kind, default, s.env, s.live, s.doc)
    if RETIRED:
        names = ", ".join(f"`{k.key}`" + (f" (`{k.env}`)" if k.env else "") for k in RETIRED)
        rows += ["", f"Removed keys, with their variables: {names}. A file or an environment "
                     "that still sets one loads; the value has no effect, and a "
                     "`config_key_ignored` warning names the key and where it was set."]
    return "\n".join(rows) + "\n"


def write_doc(path: Path) -> bool:
    """Rewrite the settings table of the document at `path`; True if it changed."""
    text = path.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    new = f"{head}{BEGIN}\n{markdown()}{END}{tail}"
    if new == text:
        return False
    path.write_text(new)
    return True
