"""Configuration files written for a test, and the problems `config.load` finds in them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateproxy import config


def write(tmp_path: Path, text: str) -> str:
    """`text` as tmp_path/gateproxy.yaml; its path."""
    path = tmp_path / "gateproxy.yaml"
    path.write_text(text)
    return str(path)


def problems(path: str | None, env: dict[str, str] | None = None) -> list[str]:
    """The problems `config.load` reports (it must refuse the configuration)."""
    with pytest.raises(config.ConfigError) as err:
        config.load(path, env or {})
    return [str(p) for p in err.value.problems]
