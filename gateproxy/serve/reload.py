"""Live reload: SIGHUP or a change of the configuration file applies a new configuration
without a restart and without dropping a request.

The new state (configuration, gate, version: a `Runtime`) is built completely and then
swapped in with one assignment, so every request is judged by either the old gate or the
new one. A file with a problem is rejected with one log line and the running configuration
keeps serving. The settings not `live` in gateproxy/config/settings.py (those that belong to
open sockets and sessions: listen address, ports, upstream URL and timeouts, paths; and
the secrets, a dependency's included) keep their running values until a restart, and the
log names them (by key, never a secret's value).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, Protocol

from gateproxy import config, logs
from gateproxy.config import settings
from gateproxy.config.readers import ConfigError
from gateproxy.config.version import content_hash, version_of
from gateproxy.core import answers
from gateproxy.core.gate import Gate, Guard
from gateproxy.core.model import DEFAULTS_SOURCE, Config, Dependency
from gateproxy.core.runtime import Runtime
from gateproxy.logs import log


def _keep_restart_only(running: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """`new`, with the settings a running process cannot change (those not `live` in
    gateproxy/config/settings.py) kept as they run; and the keys of those whose new value waits
    for a restart. A dependency's are kept where it runs already (matched by name); a new
    one has nothing running and takes its new values."""
    pending: list[str] = []

    def keep(obj: Any, kept_from: Any, setting: settings.Setting, key: str) -> Any:
        kept = _at(kept_from, setting.path)
        # The real values: `content()` redacts secrets, and a changed secret waits too.
        if _at(obj, setting.path) == kept:
            return obj
        pending.append(key)  # the key only: never a secret's value
        return _with(obj, setting.path, kept)

    for setting in settings.top_level():
        if not setting.live:
            new = keep(new, running, setting, setting.key)
    restart_only = [s for s in settings.per_dependency() if not s.live]
    runs = {dep.name: dep for dep in running.dependencies}
    dependencies = []
    for dep in new.dependencies:
        old = runs.get(dep.name)
        if old is not None:
            for setting in restart_only:
                key = f"dependencies[{dep.name}].{'.'.join(setting.path)}"
                dep = keep(dep, old, setting, key)
        dependencies.append(dep)
    return replace(new, dependencies=tuple(dependencies)), tuple(pending)


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = getattr(obj, part)
    return obj


def _with(obj: Any, path: tuple[str, ...], value: Any) -> Any:
    """Frozen `obj` with the field at `path` (nested dataclasses) set to `value`."""
    head, *rest = path
    return replace(obj, **{head: _with(getattr(obj, head), tuple(rest), value)
                           if rest else value})


class Reloadable(Protocol):
    """What a reload needs of the running proxy."""

    runtime: Runtime
    draining: bool

    def make_guard(self, dep: Dependency) -> Guard: ...

    def count_reload(self, applied: bool) -> None: ...


async def apply(proxy: Reloadable, new: Config) -> None:
    """Make `new` the running configuration, except for the settings that need a restart:
    those keep their running values and are logged."""
    old = proxy.runtime
    running = old.config
    applied, pending = _keep_restart_only(running, new)
    previous = {g.status.dep.name: g for g in old.guards}
    guards: list[Guard] = []
    added: list[Guard] = []
    for dep in applied.dependencies:
        guard = previous.pop(dep.name, None)
        if guard is None:
            guard = proxy.make_guard(dep)
            added.append(guard)
        else:
            if dep != guard.status.dep or guard.status.retries_exhausted:
                guard.monitor.reconfigure(dep)
            guard = replace(guard, body=answers.error_body(dep.not_ready.code,
                                                           dep.not_ready.message))
        guards.append(guard)
    version = old.version
    changed = content_hash(applied) != version.hash
    if changed or pending != version.pending_restart:
        version = version_of(applied, version.number + int(changed), pending)
    # The whole new state in one assignment: a request sees the old one or the new one.
    proxy.runtime = Runtime(applied, Gate.build(guards, applied), version)
    if (applied.log.format, applied.log.level) != (running.log.format, running.log.level):
        logs.configure(applied.log.format, applied.log.level)
    for guard in added:
        guard.monitor.start()
    for guard in previous.values():
        await guard.monitor.stop()
    log.info("config_reloaded", version=version.number, hash=version.hash, changed=changed,
             added=[g.status.dep.name for g in added], removed=sorted(previous),
             gatedRoutes={g.status.dep.name: [r.prefix for r in g.status.dep.gated_routes]
                          for g in guards})
    if pending:
        log.warning("config_restart_required", keys=list(pending),
                    message="these settings keep their running values until a restart")


class Reloader:
    """Reloads on SIGHUP and, when serving from a file, when that file changes."""

    def __init__(self, proxy: Reloadable, env: Mapping[str, str] | None = None) -> None:
        self.proxy = proxy
        source = proxy.runtime.config.source
        self.path = None if source == DEFAULTS_SOURCE else os.path.abspath(source)
        self._env = env
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._pending: set[asyncio.Task[bool]] = set()

    async def reload(self, trigger: str) -> bool:
        """Load and apply the configuration; False (and the old one kept) on a problem."""
        async with self._lock:
            if self.proxy.draining:
                return False
            try:
                new = config.load(self.path, self._env)
            except Exception as exc:  # whatever the file holds, the running config stays
                problems = ([str(p) for p in exc.problems] if isinstance(exc, ConfigError)
                            else [f"{self.path}: cannot be loaded: {exc!r}"])
                self.proxy.count_reload(applied=False)
                log.error("config_reload_rejected", trigger=trigger, source=self.path,
                          problems=problems,
                          runningVersion=self.proxy.runtime.version.number,
                          message="the file has problems; the running configuration "
                                  "keeps serving")
                return False
            log.info("config_reload", trigger=trigger, source=self.path)
            await apply(self.proxy, new)
            self.proxy.count_reload(applied=True)
            return True

    def _on_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _watch(self, path: str) -> None:
        directory, name = os.path.split(path)

        # Loaded here, not with the module: a worker of several reloads when its
        # supervisor says so and never watches, so it never loads it.
        from watchfiles import Change, awatch

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
