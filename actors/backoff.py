"""Exponential backoff with full jitter (AWS architecture blog's "full jitter")."""

from __future__ import annotations

import random

from stamp.config import RetryPolicy


def backoff_delay(policy: RetryPolicy, attempt: int) -> float:
    """Delay before retry number ``attempt`` (1-based)."""
    ceiling = min(policy.cap_seconds, policy.base_seconds * (2 ** max(0, attempt - 1)))
    return random.uniform(ceiling / 2, ceiling)
