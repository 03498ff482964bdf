"""``scripts/bench.py``'s crypto ceiling measures the backend it is asked for."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from stamp.crypto import backend


def _bench() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    spec = importlib.util.spec_from_file_location("stamp_bench_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_libsodium_ceiling_runs_its_workers_on_libsodium() -> None:
    ceiling = _bench().crypto_ceiling(4, True, "sodium")
    assert ceiling["backend"] == "sodium" and ceiling["bundles"] == 4 and ceiling["per_second"] > 0


def test_without_a_backend_the_ceiling_uses_the_one_stamp_would(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(backend.ENV_VAR, raising=False)
    expected = backend.select("auto").group.name
    assert _bench().crypto_ceiling(4, True)["backend"] == expected
