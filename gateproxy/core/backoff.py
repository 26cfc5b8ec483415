"""Retry delays after failed probes: exponential, capped, with additive jitter (pure)."""

from __future__ import annotations

import random

from gateproxy.core.model import Retry


def retry_delay_ms(failures: int, retry: Retry, rng: random.Random) -> int:
    """Delay before the next probe after `failures` consecutive failures (>= 1):
    min(max, base * 2^(failures-1)) + uniform integer jitter in [0, jitter]."""
    exponent = min(max(failures, 1) - 1, 62)  # 2^62 already dwarfs any max_delay_ms
    delay = min(retry.max_delay_ms, retry.base_delay_ms * (1 << exponent))
    return delay + (rng.randint(0, retry.jitter_ms) if retry.jitter_ms > 0 else 0)
