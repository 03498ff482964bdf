"""Settings read from the environment: each retry policy is named for what it retries."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from actors.certificate import rules_of
from stamp.config import RetryPolicy, load_settings


def test_crypto_retries_have_their_own_policy() -> None:
    settings = load_settings(
        {
            "STAMP_CRYPTO_RETRY_BASE_SECONDS": "0.5",
            "STAMP_CRYPTO_RETRY_CAP_SECONDS": "4",
            "STAMP_CRYPTO_RETRY_MAX_ATTEMPTS": "3",
            "STAMP_REGISTRY_RETRY_MAX_ATTEMPTS": "7",
        }
    )
    assert settings.crypto_retry == RetryPolicy(base_seconds=0.5, cap_seconds=4.0, max_attempts=3)
    assert settings.registry_retry.max_attempts == 7
    deps: Any = SimpleNamespace(settings=settings, issuer_pems={})
    rules = rules_of(deps)
    assert (rules.crypto_max_attempts, rules.registry_max_attempts) == (3, 7)
