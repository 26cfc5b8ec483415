"""Live reload: SIGHUP or a change of the configuration file applies a new configuration
without a restart and without dropping a request.

The new gate is built completely and then swapped in with plain attribute assignments,
with no `await` in between, so every request is judged by either the old gate or the new
one. A file with a problem is rejected with one log line and the running configuration
keeps serving. Settings that belong to open sockets and sessions (listen address, ports,
upstream URL and timeouts, paths) keep their running values until a restart, and the log
says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import orjson
from watchfiles import Change, awatch

from gateproxy import answers, logs
from gateproxy.config import Config, ConfigError, effective, load
from gateproxy.gate import Gate, Guard
from gateproxy.logs import log
from gateproxy.status import iso

if TYPE_CHECKING:
    from gateproxy.app import Gateway

DEFAULTS_SOURCE = "defaults"  # Config.source when no file was read


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """Which configuration is live: a counter, a hash of its content, when it was loaded,
    and the changed settings that wait for a restart."""

    number: int
    hash: str
    loaded_at: float
    source: str
    pending_restart: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg: Config, number: int, pending_restart: tuple[str, ...] = ()
           ) -> ConfigVersion:
        return cls(number, content_hash(cfg), time.time(), cfg.source, pending_restart)

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.number, "hash": self.hash, "loadedAt": iso(self.loaded_at),
                "source": self.source, "pendingRestart": list(self.pending_restart)}


def _content(cfg: Config) -> dict[str, Any]:
    """The effective configuration without where it came from (secrets redacted)."""
    return {k: v for k, v in effective(cfg).items() if k != "source"}


def content_hash(cfg: Config) -> str:
    """A short hash of the effective configuration: equal configurations, wherever they
    came from, hash the same."""
    digest = hashlib.sha256(orjson.dumps(_content(cfg), option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:16]


def _keep_restart_only(running: Config, new: Config) -> Config:
    """`new`, with the settings a running process cannot change kept as they run."""
    return replace(
        new,
        listen=running.listen,
        admin_port=running.admin_port,
        admin_prefix=running.admin_prefix,
        health_path=running.health_path,
        limits=running.limits,
        shutdown_grace_ms=running.shutdown_grace_ms,
        # The upstream session is built with these; the health timeout is read per request.
        upstream=replace(running.upstream, health_timeout_ms=new.upstream.health_timeout_ms),
    )


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in a for d in _differences(a[key], b.get(key),
                                                      f"{path}.{key}" if path else key)]
    return [] if a == b else [path]


async def apply(gateway: Gateway, new: Config) -> None:
    """Make `new` the running configuration, except for the settings that need a restart:
    those keep their running values and are logged."""
    running = gateway.config
    applied = _keep_restart_only(running, new)
    pending = tuple(_differences(_content(new), _content(applied)))
    previous = {g.status.dep.name: g for g in gateway.guards}
    guards: list[Guard] = []
    added: list[Guard] = []
    for dep in applied.dependencies:
        old = previous.pop(dep.name, None)
        if old is None:
            guard = gateway.make_guard(dep)
            added.append(guard)
        else:
            if dep != old.status.dep or old.status.retries_exhausted:
                old.monitor.reconfigure(dep)
            guard = replace(old, body=answers.error_body(dep.not_ready.code, dep.not_ready.message))
        guards.append(guard)
    # From here to the end of the swap nothing awaits: no request sees half of it.
    gate = Gate.build(guards, applied)
    gateway.guards = gate.guards
    gateway.gate = gate
    gateway.config = applied
    if (applied.log.format, applied.log.level) != (running.log.format, running.log.level):
        logs.configure(applied.log.format, applied.log.level)
    for guard in added:
        guard.monitor.start()
    version = gateway.config_version
    changed = content_hash(applied) != version.hash
    if changed or pending != version.pending_restart:
        gateway.config_version = ConfigVersion.of(applied, version.number + int(changed), pending)
    for guard in previous.values():
        await guard.monitor.stop()
    log.info("config_reloaded", version=gateway.config_version.number,
             hash=gateway.config_version.hash, changed=changed,
             added=[g.status.dep.name for g in added], removed=sorted(previous),
             gatedRoutes={g.status.dep.name: [r.prefix for r in g.status.dep.gated_routes]
                          for g in guards})
    if pending:
        log.warning("config_restart_required", keys=list(pending),
                    message="these settings keep their running values until a restart")


class Reloader:
    """Reloads on SIGHUP and, when serving from a file, when that file changes."""

    def __init__(self, gateway: Gateway, env: Mapping[str, str] | None = None) -> None:
        self.gateway = gateway
        source = gateway.config.source
        self.path = None if source == DEFAULTS_SOURCE else os.path.abspath(source)
        self._env = env
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Task[bool]] = set()

    async def reload(self, trigger: str) -> bool:
        """Load and apply the configuration; False (and the old one kept) on a problem."""
        async with self._lock:
            if self.gateway.draining:
                return False
            try:
                new = load(self.path, self._env)
            except Exception as exc:  # whatever the file holds, the running config stays
                problems = ([str(p) for p in exc.problems] if isinstance(exc, ConfigError)
                            else [f"{self.path}: cannot be loaded: {exc!r}"])
                self.gateway.metrics.reload_rejected.inc()
                log.error("config_reload_rejected", trigger=trigger, source=self.path,
                          problems=problems,
                          runningVersion=self.gateway.config_version.number,
                          message="the file has problems; the running configuration "
                                  "keeps serving")
                return False
            log.info("config_reload", trigger=trigger, source=self.path)
            await apply(self.gateway, new)
            self.gateway.metrics.reload_applied.inc()
            return True

    def _on_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _watch(self, path: str) -> None:
        directory, name = os.path.split(path)

        # Editors replace the file by renaming, and Kubernetes updates a ConfigMap volume
        # by swapping its `..data` symlink: watch the directory, not the file.
        def relevant(_: Change, changed: str) -> bool:
            base = os.path.basename(changed)
            return base == name or base.startswith("..")

        try:
            async for _ in awatch(directory, watch_filter=relevant, recursive=False,
                                  stop_event=self._stop):
                await self.reload("file_changed")
        except Exception:  # the watch is a convenience: SIGHUP still works without it
            log.opt(exception=True).error("config_watch_failed", source=path)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Listen for SIGHUP and watch the file while the block runs."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self._on_signal)
        watcher = None
        if self.path is not None:
            watcher = loop.create_task(self._watch(self.path), name="config-watch")
        log.info("config_reload_enabled", source=self.path, watching=watcher is not None)
        try:
            yield
        finally:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signal.SIGHUP)
            self._stop.set()
            if watcher is not None:
                await watcher
            for task in list(self._pending):
                await task
