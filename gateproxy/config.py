"""Load and validate the configuration: built-in defaults < YAML file < environment.

Everything ends up in frozen dataclasses; every problem is reported as one line naming
its source (the file or the environment variable), the key and what is wrong, and all
problems are collected before giving up so that an operator fixes them in one go.
"""

from __future__ import annotations

import copy
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml
from yarl import URL

from gateproxy import routes

DEFAULT_DEPENDENCY: dict[str, Any] = {
    "name": None,
    "health_key": None,
    "probe": "http",
    "base_url": None,
    "ready_path": None,  # the kind's own default: HTTP_READY_PATH or GRPC_READY_METHOD
    "health_service": None,
    "optional": True,
    "probe_interval_ms": 30000,
    "probe_timeout_ms": 2000,
    "healthy_threshold": 1,
    "unhealthy_threshold": 1,
    "retry": {"base_delay_ms": 500, "max_delay_ms": 30000, "jitter_ms": 250, "max_retries": 0},
    "gated_routes": [],
    "not_ready": None,
}

DEFAULTS: dict[str, Any] = {
    "listen": {"host": "0.0.0.0", "port": 8080},
    "upstream": {
        "url": "http://127.0.0.1:3010",
        "connect_timeout_ms": 5000,
        "read_timeout_ms": 300000,
        "health_timeout_ms": 2000,
    },
    "fast_path": True,
    "health_path": "/health",
    "admin_prefix": "/_gateproxy",
    "admin_port": None,
    "log": {"format": "json", "level": "INFO", "access": False},
    "limits": {"max_connections": 10000, "header_timeout_ms": 30000},
    "shutdown_delay_ms": 5000,
    "shutdown_grace_ms": 20000,
    "dependencies": [
        {
            "name": "docker-runner",
            "health_key": "dockerRunner",
            "base_url": "http://127.0.0.1:7071",
            "gated_routes": ["/api/containers"],
            "not_ready": {"code": "docker_runner_not_ready", "message": "docker-runner not ready"},
        }
    ],
    "cors": {"allow_origins": []},
}

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})

# (environment variable, key path); the dependency entries apply to `docker-runner`.
_ENV_GLOBAL: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GATEPROXY_HOST", ("listen", "host")),
    ("GATEPROXY_PORT", ("listen", "port")),
    ("PLATFORM_SERVER_URL", ("upstream", "url")),
    ("GATEPROXY_LOG_FORMAT", ("log", "format")),
    ("GATEPROXY_LOG_LEVEL", ("log", "level")),
    ("GATEPROXY_FAST_PATH", ("fast_path",)),
)
ENV_DEPENDENCY = "docker-runner"
_ENV_DEPENDENCY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("DOCKER_RUNNER_BASE_URL", ("base_url",)),
    ("DOCKER_RUNNER_OPTIONAL", ("optional",)),
    ("DOCKER_RUNNER_CONNECT_PROBE_INTERVAL_MS", ("probe_interval_ms",)),
    ("DOCKER_RUNNER_CONNECT_PROBE_TIMEOUT_MS", ("probe_timeout_ms",)),
    ("DOCKER_RUNNER_CONNECT_RETRY_BASE_DELAY_MS", ("retry", "base_delay_ms")),
    ("DOCKER_RUNNER_CONNECT_RETRY_MAX_DELAY_MS", ("retry", "max_delay_ms")),
    ("DOCKER_RUNNER_CONNECT_RETRY_JITTER_MS", ("retry", "jitter_ms")),
    ("DOCKER_RUNNER_CONNECT_MAX_RETRIES", ("retry", "max_retries")),
)
# The gRPC-era runner's listener (platform names): either one, without a base_url from the
# file or DOCKER_RUNNER_BASE_URL, makes docker-runner a `probe: grpc` dependency.
GRPC_HOST_ENV, GRPC_PORT_ENV = "DOCKER_RUNNER_GRPC_HOST", "DOCKER_RUNNER_GRPC_PORT"
GRPC_DEFAULT_HOST, GRPC_DEFAULT_PORT = "127.0.0.1", "50051"
SECRET_ENV = "DOCKER_RUNNER_SHARED_SECRET"
PROBE_KINDS = ("http", "grpc")
HTTP_READY_PATH = "/v1/ready"
GRPC_READY_METHOD = "/agynio.api.runner.v1.RunnerService/Ready"
_GRPC_METHOD = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*")
CONFIG_ENV = "GATEPROXY_CONFIG"


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    connect_timeout_ms: int
    read_timeout_ms: int
    health_timeout_ms: int


@dataclass(frozen=True, slots=True)
class Log:
    format: Literal["json", "text"]
    level: str
    access: bool


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int
    header_timeout_ms: int


@dataclass(frozen=True, slots=True)
class Retry:
    base_delay_ms: int
    max_delay_ms: int
    jitter_ms: int
    max_retries: int


@dataclass(frozen=True, slots=True)
class GatedRoute:
    prefix: str
    methods: frozenset[str] | None  # None: every method


@dataclass(frozen=True, slots=True)
class NotReady:
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Dependency:
    name: str
    health_key: str
    base_url: str
    ready_path: str
    optional: bool
    probe_interval_ms: int
    probe_timeout_ms: int
    healthy_threshold: int
    unhealthy_threshold: int
    retry: Retry
    gated_routes: tuple[GatedRoute, ...]
    not_ready: NotReady
    shared_secret: str | None = field(default=None, repr=False)
    probe: Literal["http", "grpc"] = "http"
    # probe: grpc only: ask grpc.health.v1.Health/Check about this service ("" is the
    # whole server) instead of calling ready_path.
    health_service: str | None = None


@dataclass(frozen=True, slots=True)
class Cors:
    allow_origins: frozenset[str]


@dataclass(frozen=True, slots=True)
class Config:
    listen: Listen
    upstream: Upstream
    fast_path: bool  # see gateproxy/aio/
    health_path: str
    admin_prefix: str
    admin_port: int | None
    log: Log
    limits: Limits
    shutdown_delay_ms: int
    shutdown_grace_ms: int
    dependencies: tuple[Dependency, ...]
    cors: Cors
    source: str  # the file it came from, or "defaults"


@dataclass(frozen=True, slots=True)
class Problem:
    source: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.key}: {self.message}"


class ConfigError(Exception):
    """Raised with every problem found; str() gives one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


Path = tuple[str | int, ...]


def key_name(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(document)"


def camel_case(name: str) -> str:
    head, *rest = re.split(r"[-_\s]+", name)
    return head.lower() + "".join(p[:1].upper() + p[1:].lower() for p in rest)


class _Loader:
    """Merges the layers while remembering where each value came from."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.origins: dict[Path, str] = {}

    def problem(self, path: Path, message: str, source: str | None = None) -> None:
        self.problems.append(Problem(source or self.origin(path), key_name(path), message))

    def origin(self, path: Path) -> str:
        # The most specific layer that set this key or one of its parents.
        for i in range(len(path), -1, -1):
            found = self.origins.get(path[:i])
            if found:
                return found
        return "defaults"

    def merge(self, base: Any, over: Any, path: Path, source: str, schema: Any) -> Any:
        """Overlay `over` (from `source`) on `base`, rejecting keys `schema` does not know."""
        if isinstance(schema, dict):
            if not isinstance(over, dict):
                self.problem(path, f"must be a mapping, got {_kind(over)}", source)
                return base
            merged = dict(base) if isinstance(base, dict) else {}
            for key, value in over.items():
                if not isinstance(key, str) or key not in schema:
                    known = ", ".join(sorted(schema))
                    self.problem((*path, _key_text(key)), f"unknown key (known keys: {known})",
                                 source)
                    continue
                merged[key] = self.merge(merged.get(key), value, (*path, key), source, schema[key])
            return merged
        if path == ("dependencies",):
            if not isinstance(over, list):
                self.problem(path, f"must be a list, got {_kind(over)}", source)
                return base
            # The list replaces the one before it, and the origins of its entries go too:
            # a problem in this list is this source's, not the defaults'.
            for key in [k for k in self.origins if k[:1] == path]:
                del self.origins[key]
            self.origins[path] = source
            return [
                self.merge(copy.deepcopy(DEFAULT_DEPENDENCY), item, (*path, i), source,
                           DEFAULT_DEPENDENCY)
                for i, item in enumerate(over)
            ]
        self.origins[path] = source
        return over


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def load(path: str | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the effective configuration; raise ConfigError listing every problem."""
    env = os.environ if env is None else env
    loader = _Loader()
    tree: dict[str, Any] = copy.deepcopy(DEFAULTS)
    tree["dependencies"] = [
        loader.merge(copy.deepcopy(DEFAULT_DEPENDENCY), dep, ("dependencies", i), "defaults",
                     DEFAULT_DEPENDENCY)
        for i, dep in enumerate(tree["dependencies"])
    ]
    path = path or env.get(CONFIG_ENV) or None
    source = "defaults"
    if path:
        source = path
        document = _read_yaml(path, loader)
        if document is not None:
            schema = {**DEFAULTS, "dependencies": None}
            tree = loader.merge(tree, document, (), path, schema)
    _apply_env(tree, env, loader)
    config = _build(tree, loader, env.get(SECRET_ENV), source)
    if loader.problems or config is None:
        raise ConfigError(loader.problems)
    return config


def _read_yaml(path: str, loader: _Loader) -> Any:
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
        loader.problem((), f"must be a mapping at the top level, got {_kind(document)}", path)
        return None
    return document


def _apply_env(tree: dict[str, Any], env: Mapping[str, str], loader: _Loader) -> None:
    for name, path in _ENV_GLOBAL:
        if name in env:
            node = tree
            for part in path[:-1]:
                node = node[part]
            node[path[-1]] = env[name]
            loader.origins[path] = f"env {name}"
    deps = tree.get("dependencies")
    for i, dep in enumerate(deps if isinstance(deps, list) else []):
        if not isinstance(dep, dict) or dep.get("name") != ENV_DEPENDENCY:
            continue
        for name, path in _ENV_DEPENDENCY:
            if name in env:
                node = dep
                for part in path[:-1]:
                    if not isinstance(node.get(part), dict):
                        node[part] = {}
                    node = node[part]
                node[path[-1]] = env[name]
                loader.origins[("dependencies", i, *path)] = f"env {name}"
        _apply_grpc_env(dep, ("dependencies", i), env, loader)


def _apply_grpc_env(dep: dict[str, Any], path: Path, env: Mapping[str, str],
                    loader: _Loader) -> None:
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
                       f"{GRPC_HOST_ENV} must be a host name or address, got {_show(host)}",
                       f"env {GRPC_HOST_ENV}")
        return
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) <= 65535):
        loader.problem((*path, "base_url"),
                       f"{GRPC_PORT_ENV} must be a port number (1-65535), got {_show(port)}",
                       f"env {GRPC_PORT_ENV}")
        return
    dep["probe"] = "grpc"
    dep["base_url"] = f"grpc://{host}:{int(port)}"
    loader.origins[(*path, "probe")] = loader.origins[(*path, "base_url")] = source


class _ShortRepr(reprlib.Repr):
    """repr() for problem messages: bounded in size and time whatever the document holds
    (YAML aliases can make a list of billions of items out of a few lines), and safe for
    integers past the 4300 digits Python refuses to print."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 80
        self.maxlevel, self.maxlist, self.maxdict = 3, 5, 5

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:
            return f"<a {x.bit_length()}-bit number>"
        return repr(x)


_show = _ShortRepr().repr


def _key_text(key: Any) -> str:
    """A YAML key as it goes into a problem line: as written when it is plain text,
    quoted otherwise, so that a key holding a newline cannot break the one-line format."""
    if isinstance(key, str) and key and key.isprintable() and key.strip() == key and (
            ": " not in key):
        return key
    return _show(key)


# --- typed readers: each returns the value or None after recording a problem -------------

Reader = Callable[[_Loader, Path, Any], Any]


# No setting goes past this (in ms, some 31 000 years): a larger number is a typo, and one
# past 2**1024 would not even convert to a float.
_INT_CEILING = 10**15
# ASCII only: `\s` and `\d` would also take characters int() refuses or reads otherwise.
_INTEGER = re.compile(r"[ \t]*([+-]?[0-9]+)[ \t]*")


def _int(minimum: int, maximum: int | None = None) -> Reader:
    ceiling = _INT_CEILING if maximum is None else maximum

    def read(loader: _Loader, path: Path, value: Any) -> int | None:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and (match := _INTEGER.fullmatch(value)):
            # int() refuses strings past 4300 digits: anything past 18 is out of range.
            text = match.group(1)
            digits = len(text.lstrip("+-"))
            number = int(text) if digits <= 18 else (-1 if "-" in text else 1) * 10**18
        if number is None:
            loader.problem(path, f"must be a whole number, got {_show(value)}")
            return None
        if number < minimum or number > ceiling:
            bound = (f"between {minimum} and {maximum}" if maximum is not None
                     else f"at least {minimum}" if number < minimum else f"at most {ceiling}")
            loader.problem(path, f"must be {bound}, got {_show(value)}")
            return None
        return number

    return read


def _bool(loader: _Loader, path: Path, value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, str | int) else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    loader.problem(path, f"must be a boolean (true/false/1/0/yes/no), got {_show(value)}")
    return None


def _str(loader: _Loader, path: Path, value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    loader.problem(path, f"must be a non-empty string, got {_show(value)}")
    return None


def _http_url(loader: _Loader, path: Path, value: Any) -> str | None:
    text = _str(loader, path, value)
    if text is None:
        return None
    try:
        url = URL(text)
    except ValueError as exc:
        loader.problem(path, f"is not a valid URL ({exc}): {_show(redact_url(text))}")
        return None
    if url.scheme not in ("http", "https"):
        loader.problem(path,
                       f"must be an http:// or https:// URL, got {_show(redact_url(text))}")
        return None
    if not url.host:
        loader.problem(path, f"has no host: {_show(redact_url(text))}")
        return None
    if url.query_string or url.fragment:
        loader.problem(path, "must not have a query or fragment")
        return None
    return text.rstrip("/")


def _abs_path(loader: _Loader, path: Path, value: Any) -> str | None:
    text = _str(loader, path, value)
    if text is None:
        return None
    if not text.startswith("/") or any(c in text for c in " #\\") or any(
        ord(c) < 0x20 or ord(c) == 0x7F for c in text
    ):
        loader.problem(path, f"must be a path starting with '/', got {_show(text)}")
        return None
    return text


def _choice(*choices: str, upper: bool = False) -> Reader:
    def read(loader: _Loader, path: Path, value: Any) -> str | None:
        text = value.strip() if isinstance(value, str) else None
        if text is not None and upper:
            text = text.upper()
        elif text is not None:
            text = text.lower()
        if text not in choices:
            loader.problem(path, f"must be one of {', '.join(choices)}, got {_show(value)}")
            return None
        return text

    return read


def _field(loader: _Loader, node: Any, path: Path, key: str, read: Reader) -> Any:
    return read(loader, (*path, key), node.get(key) if isinstance(node, dict) else None)


def _build(
    tree: dict[str, Any], loader: _Loader, secret: str | None, source: str
) -> Config | None:
    f = _field
    listen, upstream, log, limits, cors = (
        tree["listen"], tree["upstream"], tree["log"], tree["limits"], tree["cors"])
    port = _int(0, 65535)  # 0: any free port (tests, demos); the log says which
    ms = _int(0)
    positive_ms = _int(1)
    admin_port = None if tree["admin_port"] is None else port(
        loader, ("admin_port",), tree["admin_port"])
    listen_port = f(loader, listen, ("listen",), "port", port)
    if admin_port is not None and admin_port and admin_port == listen_port:
        loader.problem(("admin_port",), f"must differ from listen.port ({listen_port})")
    origins = cors.get("allow_origins") if isinstance(cors, dict) else None
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        loader.problem(("cors", "allow_origins"), "must be a list of origins (strings)")
        origins = []
    secret = secret.strip() if secret and secret.strip() else None
    dependencies = tuple(
        d for d in (
            _dependency(loader, dep, i, secret)
            for i, dep in enumerate(tree["dependencies"] or [])
        ) if d is not None
    )
    _check_unique(loader, dependencies)
    admin_prefix = _abs_path(loader, ("admin_prefix",), tree["admin_prefix"])
    health_path = _abs_path(loader, ("health_path",), tree["health_path"])
    config = Config(
        listen=Listen(host=f(loader, listen, ("listen",), "host", _str), port=listen_port),
        upstream=Upstream(
            url=f(loader, upstream, ("upstream",), "url", _http_url),
            connect_timeout_ms=f(loader, upstream, ("upstream",), "connect_timeout_ms",
                                 positive_ms),
            read_timeout_ms=f(loader, upstream, ("upstream",), "read_timeout_ms", ms),
            health_timeout_ms=f(loader, upstream, ("upstream",), "health_timeout_ms",
                                positive_ms),
        ),
        fast_path=f(loader, tree, (), "fast_path", _bool),
        health_path=(health_path or "/").rstrip("/") or "/",
        admin_prefix=(admin_prefix or "").rstrip("/"),
        admin_port=admin_port,
        log=Log(
            format=f(loader, log, ("log",), "format", _choice("json", "text")),
            level=f(loader, log, ("log",), "level", _choice(*LOG_LEVELS, upper=True)),
            access=f(loader, log, ("log",), "access", _bool),
        ),
        limits=Limits(
            max_connections=f(loader, limits, ("limits",), "max_connections", _int(1)),
            header_timeout_ms=f(loader, limits, ("limits",), "header_timeout_ms",
                                positive_ms),
        ),
        shutdown_delay_ms=ms(loader, ("shutdown_delay_ms",), tree["shutdown_delay_ms"]),
        shutdown_grace_ms=ms(loader, ("shutdown_grace_ms",), tree["shutdown_grace_ms"]),
        dependencies=dependencies,
        cors=Cors(allow_origins=frozenset(origins)),
        source=source,
    )
    if config.admin_prefix == "" and admin_prefix is not None:
        loader.problem(("admin_prefix",), "must not be '/' (it would hide every route)")
    return None if loader.problems else config


def _dependency(loader: _Loader, dep: Any, i: int, secret: str | None) -> Dependency | None:
    path: Path = ("dependencies", i)
    if not isinstance(dep, dict):
        return None  # merge() already reported it
    f = _field
    before = len(loader.problems)
    name = f(loader, dep, path, "name", _str)
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        loader.problem((*path, "name"),
                       f"must be letters, digits, '-', '_' or '.', got {_show(name)}")
    raw_key = dep.get("health_key")
    if raw_key is not None and not (isinstance(raw_key, str) and raw_key.strip()):
        # Not silently replaced by a blank: /health would show the dependency under "".
        loader.problem((*path, "health_key"), f"must be a non-empty string, got {_show(raw_key)}")
    health_key = raw_key or (camel_case(name) if name else None)
    retry_node = dep.get("retry")
    retry_path = (*path, "retry")
    retry = Retry(
        base_delay_ms=f(loader, retry_node, retry_path, "base_delay_ms", _int(1)),
        max_delay_ms=f(loader, retry_node, retry_path, "max_delay_ms", _int(1)),
        jitter_ms=f(loader, retry_node, retry_path, "jitter_ms", _int(0)),
        max_retries=f(loader, retry_node, retry_path, "max_retries", _int(0)),
    )
    if (isinstance(retry.base_delay_ms, int) and isinstance(retry.max_delay_ms, int)
            and retry.max_delay_ms < retry.base_delay_ms):
        loader.problem((*retry_path, "max_delay_ms"),
                       f"must be at least base_delay_ms ({retry.base_delay_ms}), "
                       f"got {retry.max_delay_ms}")
    not_ready = dep.get("not_ready")
    if not_ready is None:
        # Without a usable name the entry is already rejected: no second line for it.
        label = name or "dependency"
        snake = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
        not_ready = {"code": f"{snake}_not_ready", "message": f"{label} not ready"}
    nr_path = (*path, "not_ready")
    probe = f(loader, dep, path, "probe", _choice(*PROBE_KINDS))
    base_url, ready_path, health_service = _probe_target(loader, dep, path, probe)
    built = Dependency(
        name=name,
        health_key=health_key if isinstance(health_key, str) else "",
        base_url=base_url,
        ready_path=ready_path,
        optional=f(loader, dep, path, "optional", _bool),
        probe_interval_ms=f(loader, dep, path, "probe_interval_ms", _int(1)),
        probe_timeout_ms=f(loader, dep, path, "probe_timeout_ms", _int(1)),
        healthy_threshold=f(loader, dep, path, "healthy_threshold", _int(1, 100)),
        unhealthy_threshold=f(loader, dep, path, "unhealthy_threshold", _int(1, 100)),
        retry=retry,
        gated_routes=_gated_routes(loader, dep.get("gated_routes"), (*path, "gated_routes")),
        not_ready=NotReady(
            code=f(loader, not_ready, nr_path, "code", _str),
            message=f(loader, not_ready, nr_path, "message", _str),
        ),
        shared_secret=secret if name == ENV_DEPENDENCY else None,
        probe=probe,
        health_service=health_service,
    )
    return built if len(loader.problems) == before else None


def _probe_target(loader: _Loader, dep: dict[str, Any], path: Path, probe: str | None
                  ) -> tuple[Any, Any, Any]:
    """base_url, ready_path and health_service, checked against the probe kind (like the
    readers, None after recording a problem)."""
    raw_url, raw_path = dep.get("base_url"), dep.get("ready_path")
    health_service = dep.get("health_service")
    scheme = raw_url.strip().partition("://")[0].lower() if isinstance(raw_url, str) else ""
    if probe == "grpc":
        base_url = _grpc_url(loader, (*path, "base_url"), raw_url)
        ready_path = (GRPC_READY_METHOD if raw_path is None
                      else _grpc_method(loader, (*path, "ready_path"), raw_path))
        if health_service is not None:
            if not isinstance(health_service, str) or not (
                    health_service == "" or health_service.isprintable()):
                loader.problem((*path, "health_service"),
                               f"must be a gRPC service name (a string), got "
                               f"{_show(health_service)}")
            elif raw_path is not None:
                loader.problem((*path, "health_service"),
                               "calls grpc.health.v1.Health/Check instead of ready_path: "
                               "set one of the two")
        return base_url, ready_path, health_service
    if probe == "http" and scheme in ("grpc", "grpcs"):
        loader.problem((*path, "base_url"),
                       f"{scheme}:// needs probe: grpc (the probe is http), got "
                       f"{_show(redact_url(str(raw_url)))}")
        base_url = None
    else:
        base_url = _http_url(loader, (*path, "base_url"), raw_url)
    ready_path = (HTTP_READY_PATH if raw_path is None
                  else _abs_path(loader, (*path, "ready_path"), raw_path))
    if probe == "http" and health_service is not None:
        loader.problem((*path, "health_service"), "needs probe: grpc (the probe is http)")
    return base_url, ready_path, None


def _grpc_url(loader: _Loader, path: Path, value: Any) -> str | None:
    text = _str(loader, path, value)
    if text is None:
        return None
    shown = _show(redact_url(text))
    try:
        url = URL(text.rstrip("/"))
        port = url.explicit_port
    except ValueError:
        loader.problem(path, f"is not a valid URL: {shown}")
        return None
    if url.scheme not in ("grpc", "grpcs"):
        loader.problem(path, f"must be a grpc:// or grpcs:// URL (probe: grpc), got {shown}")
    elif not url.host or port is None:
        loader.problem(path, f"must name a host and a port (grpc://host:50051), got {shown}")
    elif url.user is not None or url.password is not None:
        loader.problem(path, f"must not carry credentials (gRPC sends none), got {shown}")
    elif url.raw_path not in ("", "/") or url.query_string or url.fragment:
        loader.problem(path, f"must be only scheme, host and port, got {shown}")
    else:
        return f"{url.scheme}://{url.raw_authority}"
    return None


def _grpc_method(loader: _Loader, path: Path, value: Any) -> str | None:
    text = _str(loader, path, value)
    if text is not None and not _GRPC_METHOD.fullmatch(text):
        loader.problem(path, "must be a full gRPC method path (/package.Service/Method), "
                             f"got {_show(text)}")
        return None
    return text


def _gated_routes(loader: _Loader, value: Any, path: Path) -> tuple[GatedRoute, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        loader.problem(path, f"must be a list, got {_kind(value)}")
        return ()
    out = []
    for i, item in enumerate(value):
        item_path = (*path, i)
        methods: frozenset[str] | None = None
        if isinstance(item, dict):
            unknown = set(item) - {"prefix", "methods"}
            for key in sorted(map(_key_text, unknown)):
                loader.problem((*item_path, key), "unknown key (known keys: methods, prefix)")
            prefix = _abs_path(loader, (*item_path, "prefix"), item.get("prefix"))
            raw_methods = item.get("methods")
            if raw_methods is not None:
                methods = _methods(loader, raw_methods, (*item_path, "methods"))
        else:
            prefix = _abs_path(loader, item_path, item)
        if prefix is None:
            continue
        try:
            canonical = routes.canonical_prefix(prefix)
        except routes.BadPath as exc:
            loader.problem(item_path, f"is not a usable prefix: {exc}")
            continue
        out.append(GatedRoute(prefix=canonical, methods=methods))
    return tuple(out)


def _methods(loader: _Loader, value: Any, path: Path) -> frozenset[str] | None:
    if not isinstance(value, list) or not value:
        loader.problem(path, "must be a non-empty list of HTTP methods")
        return None
    methods = set()
    for m in value:
        if not isinstance(m, str) or m.upper() not in HTTP_METHODS:
            loader.problem(path, f"{_show(m)} is not an HTTP method")
            continue
        methods.add(m.upper())
    # Routers answer HEAD with the GET handler, so a gated GET gates HEAD too.
    if "GET" in methods:
        methods.add("HEAD")
    return frozenset(methods)


def _check_unique(loader: _Loader, deps: tuple[Dependency, ...]) -> None:
    for attr in ("name", "health_key"):
        seen: set[str] = set()
        for i, dep in enumerate(deps):
            value = getattr(dep, attr)
            if value in seen:
                loader.problem(("dependencies", i, attr), f"{_show(value)} is used twice")
            seen.add(value)


def redact_url(url: str) -> str:
    """The URL without credentials, for logs, snapshots and check-config."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable URL>"
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None))


def effective(config: Config) -> dict[str, Any]:
    """The configuration as plain data, secrets redacted: what check-config prints."""
    return {
        "source": config.source,
        "listen": {"host": config.listen.host, "port": config.listen.port},
        "upstream": {
            "url": redact_url(config.upstream.url),
            "connect_timeout_ms": config.upstream.connect_timeout_ms,
            "read_timeout_ms": config.upstream.read_timeout_ms,
            "health_timeout_ms": config.upstream.health_timeout_ms,
        },
        "fast_path": config.fast_path,
        "health_path": config.health_path,
        "admin_prefix": config.admin_prefix,
        "admin_port": config.admin_port,
        "log": {"format": config.log.format, "level": config.log.level,
                "access": config.log.access},
        "limits": {"max_connections": config.limits.max_connections,
                   "header_timeout_ms": config.limits.header_timeout_ms},
        "shutdown_delay_ms": config.shutdown_delay_ms,
        "shutdown_grace_ms": config.shutdown_grace_ms,
        "dependencies": [
            {
                "name": d.name,
                "health_key": d.health_key,
                "probe": d.probe,
                "base_url": redact_url(d.base_url),
                "ready_path": d.ready_path,
                "health_service": d.health_service,
                "optional": d.optional,
                "probe_interval_ms": d.probe_interval_ms,
                "probe_timeout_ms": d.probe_timeout_ms,
                "healthy_threshold": d.healthy_threshold,
                "unhealthy_threshold": d.unhealthy_threshold,
                "retry": {"base_delay_ms": d.retry.base_delay_ms,
                          "max_delay_ms": d.retry.max_delay_ms,
                          "jitter_ms": d.retry.jitter_ms,
                          "max_retries": d.retry.max_retries},
                "gated_routes": [
                    r.prefix if r.methods is None
                    else {"prefix": r.prefix, "methods": sorted(r.methods)}
                    for r in d.gated_routes
                ],
                "not_ready": {"code": d.not_ready.code, "message": d.not_ready.message},
                "shared_secret": "<redacted>" if d.shared_secret else None,
            }
            for d in config.dependencies
        ],
        "cors": {"allow_origins": sorted(config.cors.allow_origins)},
    }
