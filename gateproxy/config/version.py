"""Which configuration is live: its content without its origin, a short hash of that,
and the `ConfigVersion` a loaded configuration starts or continues."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import orjson

from gateproxy.config.loader import effective
from gateproxy.core.model import Config
from gateproxy.core.runtime import ConfigVersion


def version_of(cfg: Config, number: int, pending_restart: tuple[str, ...] = ()
               ) -> ConfigVersion:
    """Version `number` of the configuration `cfg`, loaded now."""
    return ConfigVersion(number, content_hash(cfg), time.time(), cfg.source, pending_restart)


def content(cfg: Config) -> dict[str, Any]:
    """The effective configuration without where it came from (secrets redacted)."""
    return {k: v for k, v in effective(cfg).items() if k != "source"}


def content_hash(cfg: Config) -> str:
    """A short hash of the effective configuration: equal configurations, wherever they
    came from, hash the same."""
    digest = hashlib.sha256(orjson.dumps(content(cfg), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]
