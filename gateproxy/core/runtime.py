"""The live state requests are served with: one frozen value.

The configuration, the gate built from it (with the guards of every dependency) and the
configuration's version travel together. A reload builds a new `Runtime` completely and
then replaces the old one with one assignment, so every request sees either the old
state or the new one, never a mix. A worker process (`workers: N`) is given no `Runtime`:
it builds its own from the same configuration file, with guards that follow the
supervisor's probe results over the control channel (gateproxy/workers/control.py), and reloads
that file itself when the supervisor says `reload`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateproxy.core.dependency import iso
from gateproxy.core.gate import Gate, Guard
from gateproxy.core.model import Config


@dataclass(frozen=True, slots=True)
class Runtime:
    config: Config
    gate: Gate
    version: ConfigVersion

    @property
    def guards(self) -> tuple[Guard, ...]:
        return self.gate.guards


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """Which configuration is live: a counter, a hash of its content, when it was loaded,
    and the changed settings that wait for a restart (made by gateproxy/config/version.py)."""

    number: int
    hash: str
    loaded_at: float
    source: str
    pending_restart: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"version": self.number, "hash": self.hash, "loadedAt": iso(self.loaded_at),
                "source": self.source, "pendingRestart": list(self.pending_restart)}
