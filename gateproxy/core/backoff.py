"""Retry delays after failed probes: exponential, capped, with additive jitter (pure)."""

from __future__ import annotations

import random


def retry_delay_ms(failures: int, base_ms: int, max_ms: int, jitter_ms: int,
                   rng: random.Random) -> int:
    """Delay before the next probe after `failures` consecutive failures (>= 1):
    min(max, base * 2^(failures-1)) + uniform integer jitter in [0, jitter]."""
    exponent = min(max(failures, 1) - 1, 62)  # 2^62 already dwarfs any max_delay_ms
    delay = min(max_ms, base_ms * (1 << exponent))
    return delay + (rng.randint(0, jitter_ms) if jitter_ms > 0 else 0)
