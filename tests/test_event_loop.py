"""The event loop `stamp serve` runs on (STAMP_EVENT_LOOP, stamp/event_loop.py): uvloop
by default where it is installed, asyncio's on request, and either one issues and
delivers certificates end to end."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from stamp import event_loop
from stamp.config import ConfigError, load_settings
from tests.faults import start_scenario, stop_scenario
from tests.test_cli_serve import run_stamp


async def _name_of_running_loop() -> str:
    return event_loop.running_loop_name()


def test_auto_runs_on_uvloop_where_it_is_installed_and_asyncio_on_request() -> None:
    pytest.importorskip("uvloop")
    assert event_loop.run(_name_of_running_loop(), "auto") == "uvloop"
    assert event_loop.run(_name_of_running_loop(), "uvloop") == "uvloop"
    assert event_loop.run(_name_of_running_loop(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_loop, "_uvloop", lambda: None)  # as on a machine without it
    assert event_loop.run(_name_of_running_loop(), "auto") == "asyncio"
    with pytest.raises(ConfigError, match="STAMP_EVENT_LOOP"):
        load_settings({"STAMP_EVENT_LOOP": "uvloop"})


def test_an_unknown_event_loop_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match=r"STAMP_EVENT_LOOP.*auto, uvloop, asyncio"):
        load_settings({"STAMP_EVENT_LOOP": "trio"})
    assert load_settings({"STAMP_EVENT_LOOP": "AsyncIO"}).event_loop == "asyncio"


def test_check_config_names_the_event_loop_in_use() -> None:
    pytest.importorskip("uvloop")
    for choice, in_use in (("auto", "uvloop"), ("asyncio", "asyncio")):
        result = run_stamp("check-config", env={"STAMP_EVENT_LOOP": choice})
        assert result.returncode == 0, result.stderr
        shown = orjson.loads(result.stdout)
        assert (shown["event_loop"], shown["event_loop_in_use"]) == (choice, in_use)


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(("choice", "expected"), [("auto", "uvloop"), ("asyncio", "asyncio")])
async def test_serve_issues_and_delivers_on_the_loop_it_names(
    choice: str, expected: str, database_dsn: str, tmp_path: Path
) -> None:
    pytest.importorskip("uvloop")
    scenario = await start_scenario(database_dsn, tmp_path, STAMP_EVENT_LOOP=choice, STAMP_LOG_FORMAT="json")
    try:
        await scenario.create_recipients(3)
        await scenario.post_certificates(12)
        states = await scenario.wait_terminal(timeout=120)
        assert states.get("delivered") == 12, states
        await scenario.check_invariants()
    finally:
        await stop_scenario(scenario)
    started = [line for line in scenario.log_path.read_text().splitlines() if "stamp.started" in line]
    assert started, "no stamp.started line"
    assert re.search(rf'"event_loop":\s*"{expected}"', started[0]), started[0]
