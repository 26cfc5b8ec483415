"""Structured logs: one JSON object per line on stderr (or plain text for people).

Every line has `time`, `level` and `event`; the keyword arguments of a logging call
become fields. Callers write `log.error("probe_failed", dependency=..., ...)`.
"""

from __future__ import annotations

import sys
import traceback
from datetime import UTC
from typing import Any, TextIO

import orjson
from loguru import logger

log = logger


def _json_sink(stream: TextIO) -> Any:
    def sink(message: Any) -> None:
        record = message.record
        line = {
            "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record["level"].name,
            "event": record["message"],
            **record["extra"],
        }
        if record["exception"] is not None:
            line["exception"] = "".join(traceback.format_exception(*record["exception"]))
        stream.write(orjson.dumps(line, default=str).decode() + "\n")
        stream.flush()

    return sink


def _text_sink(stream: TextIO) -> Any:
    def sink(message: Any) -> None:
        record = message.record
        fields = " ".join(f"{k}={v}" for k, v in record["extra"].items() if v is not None)
        time = record["time"].astimezone(UTC).strftime("%H:%M:%S.%f")[:-3]
        stream.write(f"{time} {record['level'].name:<7} {record['message']} {fields}\n")
        stream.flush()

    return sink


def configure(fmt: str = "json", level: str = "INFO", stream: TextIO | None = None) -> None:
    """(Re)direct every log line to stderr in `fmt` at `level`; safe to call again."""
    logger.remove()
    target = stream or sys.stderr
    sink = _json_sink(target) if fmt == "json" else _text_sink(target)
    logger.add(sink, level=level, format="{message}", backtrace=False, diagnose=False,
               catch=True)


# How an access-log line's request was answered.
GATED, FORWARDED, LOCAL = "gated", "forwarded", "local"


def access(method: str, target: str, status: int, seconds: float, outcome: str,
           written: int | None, remote: str | None) -> None:
    """One access-log line (`log.access: true`): `written`, the bytes of the answer."""
    query = target.find("?")
    log.info("access", method=method,
             # The query string is left out: it often carries tokens.
             path=target if query < 0 else target[:query], status=status,
             durationMs=round(seconds * 1000, 2), outcome=outcome, bytes=written,
             remote=remote)
