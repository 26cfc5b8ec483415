"""The configuration as typed, frozen values: what gateproxy/config/loader.py builds from
defaults, the file and the environment, and what every other layer reads.

Each field is a setting of gateproxy/config/settings.py, where its key, reader, default
and documentation are declared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from yarl import URL

DEFAULTS_SOURCE: Final = "defaults"  # Config.source when no file was read


@dataclass(frozen=True, slots=True)
class GatedRoute:
    prefix: str
    methods: frozenset[str] | None  # None: every method


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Upstream:
    url: str
    connect_timeout_ms: int
    read_timeout_ms: int
    retry_connect_ms: int
    retry_max_requests: int
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
    max_field_size: int  # bytes: the longest header line (name plus value) on the proxy port
    keepalive_timeout_ms: int  # an idle client keep-alive connection on the proxy port


@dataclass(frozen=True, slots=True)
class Retry:
    base_delay_ms: int
    max_delay_ms: int
    jitter_ms: int
    max_retries: int


@dataclass(frozen=True, slots=True)
class NotReady:
    code: str
    message: str
    grpc_code: str = "UNAVAILABLE"  # the status of a gated RPC (gateproxy/http_rules/rpc.py)


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
    recheck_on_status: frozenset[int]
    hold_ms: int
    hold_max_requests: int
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
    workers: int | Literal["auto"]
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
    admin_token: str | None = field(default=None, repr=False)


def redact_url(url: str) -> str:
    """The URL without credentials, for logs, snapshots and check-config."""
    try:
        parsed = URL(url)
    except ValueError:
        return "<unparseable URL>"
    if parsed.user is None and parsed.password is None:
        return url
    return str(parsed.with_user(None))
