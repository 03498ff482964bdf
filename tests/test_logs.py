"""Logs (issue 14, item 8): the fields the README documents are on the real
transition lines of a running Stamp, and the secret-masking processor masks."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
import pytest

from stamp.logging import SECRET_KEYS, _mask_secrets
from tests.faults import start_scenario, stop_scenario
from tests.logs import json_lines
from tests.stack import REGISTRY, certificate_body

LIFECYCLE = ["stored", "sent_to_registry", "issued_in_registry", "marked_as_issued", "delivered"]


@pytest.mark.asyncio(loop_scope="session")
async def test_transition_lines_carry_the_documented_fields(empty_database_dsn: str, tmp_path: Path) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(1)
        body = certificate_body(scenario.recipients[0])
        certificate_id = body["certificate"]["id"]
        request_id = f"logs-{uuid.uuid4().hex[:12]}"
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"{scenario.stamp.base}/v1/certificates", json=body, headers={"X-Request-Id": request_id}
            ) as r,
        ):
            assert r.status == 202, await r.text()
        scenario.ids.append(certificate_id)
        await scenario.wait_terminal(timeout=60)
        assert await scenario.stamp.terminate() == 0
    finally:
        await stop_scenario(scenario)

    lines = [
        line
        for line in json_lines(scenario.log_path.read_text())
        if line.get("event") == "certificate.transitioned" and line.get("certificate_id") == certificate_id
    ]
    assert [line["state"] for line in lines] == LIFECYCLE
    for line in lines:
        assert line["registry"] == REGISTRY, line
        assert line["recipient_id"] == scenario.recipients[0], line
        assert line["level"] == "info" and "timestamp" in line
    # The request that stored it is named on the line of that transition.
    assert lines[0]["request_id"] == request_id


@pytest.mark.asyncio(loop_scope="session")
async def test_a_batch_is_one_intake_line_that_each_stored_event_names(
    empty_database_dsn: str, tmp_path: Path
) -> None:
    scenario = await start_scenario(empty_database_dsn, tmp_path, STAMP_AUTO_MIGRATE="true")
    try:
        await scenario.create_recipients(1)
        bodies = [certificate_body(scenario.recipients[0]) for _ in range(3)]
        invalid = certificate_body(scenario.recipients[0], certificate={"quantity": 0})
        ids = [body["certificate"]["id"] for body in bodies]
        request_id = f"batch-{uuid.uuid4().hex[:12]}"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{scenario.stamp.base}/v1/certificates/batch",
                json={"certificates": [*bodies, invalid]},
                headers={"X-Request-Id": request_id},
            ) as r:
                assert r.status == 200, await r.text()
            scenario.ids += ids
            await scenario.wait_terminal(timeout=60)
            histories = []
            for certificate_id in ids:
                async with http.get(
                    f"{scenario.stamp.base}/v1/certificates/{REGISTRY}/{certificate_id}"
                ) as r:
                    histories.append((await r.json())["events"])
        assert await scenario.stamp.terminate() == 0
    finally:
        await stop_scenario(scenario)

    lines = json_lines(scenario.log_path.read_text())
    batch_lines = [line for line in lines if line.get("event") == "certificates.batch_stored"]
    assert len(batch_lines) == 1, batch_lines
    (batch,) = batch_lines
    assert batch["request_id"] == request_id and batch["level"] == "info"
    assert (batch["items"], batch["accepted"], batch["already_accepted"], batch["failed"]) == (4, 3, 0, 1)
    # Each certificate's intake is found from its history: the stored event names the batch.
    for events in histories:
        assert events[0]["type"] == "CertificateStored"
        assert events[0]["detail"] == {"batchId": batch["batch_id"]}
    # No per-certificate line for the intake; the transitions after it are logged as before.
    for certificate_id in ids:
        states = [
            line["state"]
            for line in lines
            if line.get("event") == "certificate.transitioned"
            and line.get("certificate_id") == certificate_id
        ]
        assert states == LIFECYCLE[1:], (certificate_id, states)


def test_the_processor_masks_secret_named_keys_in_any_case() -> None:
    event = {
        "event": "x",
        "salt": b"\x01" * 16,
        "Blinding": "abc",
        "RANDOMR": "r",
        "authorization": "Bearer eyJ…",
        "Token": "t",
        "private_key": "-----BEGIN PRIVATE KEY-----",
        "certificate_id": "c",
        "state": "stored",
        "attempt": 2,
    }
    masked = _mask_secrets(None, "info", dict(event))
    for key in ("salt", "Blinding", "RANDOMR", "authorization", "Token", "private_key"):
        assert masked[key] == "***", key
    assert {k: masked[k] for k in ("event", "certificate_id", "state", "attempt")} == {
        "event": "x",
        "certificate_id": "c",
        "state": "stored",
        "attempt": 2,
    }
    assert {"salt", "salts", "blinding", "random_r", "issuer_key", "token", "password"} <= SECRET_KEYS


def test_the_configured_pipeline_masks_before_rendering() -> None:
    """Through configure_logging as `stamp serve` runs it (a child process: the
    configuration is global)."""
    program = (
        "import structlog\n"
        "from stamp.logging import configure_logging\n"
        "configure_logging('json', 'info')\n"
        "structlog.get_logger('t').info('secrets.logged', salt='c2FsdHNhbHQ=',"
        " Authorization='Bearer abc.def', issuer_key='PEMPEM', certificate_id='kept')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    (line,) = [x for x in json_lines(result.stdout) if x.get("event") == "secrets.logged"]
    assert line["salt"] == line["Authorization"] == line["issuer_key"] == "***"
    assert line["certificate_id"] == "kept"
    for secret in ("c2FsdHNhbHQ=", "abc.def", "PEMPEM"):
        assert secret not in result.stdout
