"""Reading back the JSON log lines gateproxy wrote to a captured stream."""

from __future__ import annotations

import io

import orjson


def log_lines(stream: io.StringIO) -> list[dict[str, object]]:
    """Every line written to `stream` so far, each a JSON object."""
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]
