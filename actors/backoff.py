"""Exponential backoff with "equal jitter" (the AWS architecture blog's name): half
the exponential delay is kept, the other half drawn at random, so retries spread out
without ever coming back almost at once."""

from __future__ import annotations

import random

from stamp.config import RetryPolicy


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Delay before retry number ``attempt`` (1-based)."""
    ceiling = min(policy.cap_seconds, policy.base_seconds * (2 ** max(0, attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)
