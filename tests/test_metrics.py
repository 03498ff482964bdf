"""GET /metrics after real runs: the counters add up to what happened.

The metrics live on the process-wide registry, shared with every other Stamp app this
test process runs, so each test compares a scrape before with a scrape after.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from stamp import metrics
from stamp.crypto import backend as crypto_backend
from tests.stack import REGISTRY, Stack, certificate_body, running_stack
from tests.waiting import wait_until

Sample = tuple[str, frozenset[tuple[str, str]]]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(database_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with running_stack(database_dsn, tmp_path_factory.mktemp("stamp-metrics")) as running:
        yield running


async def scrape_text(stack: Stack, accept: str | None = None) -> tuple[str, str]:
    headers = {"Accept": accept} if accept else {}
    async with stack.http.get(f"{stack.base}/metrics", headers=headers) as response:
        assert response.status == 200
        return response.headers["Content-Type"], await response.text()


async def scrape(stack: Stack) -> dict[Sample, float]:
    _, text = await scrape_text(stack)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """Sum over every label set that contains ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


TERMINAL_COUNTERS = (
    "stamp_certificates_issued_total",
    "stamp_certificates_rejected_total",
    "stamp_certificates_failed_total",
)


async def issue(stack: Stack, bodies: list[dict[str, Any]]) -> dict[str, str]:
    before = await scrape(stack)
    statuses = await asyncio.gather(*(stack.post_certificate(b) for b in bodies))
    assert [s for s, _ in statuses] == [202] * len(bodies)
    states = await stack.wait_terminal([(REGISTRY, b["certificate"]["id"]) for b in bodies])

    async def counted() -> bool:
        # The metric hook runs just after the commit the test saw.
        after = await scrape(stack)
        return sum(total(after, n) - total(before, n) for n in TERMINAL_COUNTERS) >= len(bodies)

    await wait_until(counted, what="the terminal transitions counted")
    return states


async def test_counters_add_up_after_a_run_of_delivered_certificates(stack: Stack) -> None:
    before = await scrape(stack)
    recipients = [await stack.create_recipient() for _ in range(3)]
    bodies = [
        certificate_body(
            recipients[i % 3], certificate={"type": "consumption" if i % 4 == 0 else "production"}
        )
        for i in range(12)
    ]
    states = await issue(stack, bodies)
    assert set(states.values()) == {"delivered"}
    after = await scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("stamp_certificates_received_total") == 12
    assert delta("stamp_certificates_issued_total") == 12
    assert delta("stamp_certificates_issued_total", type="consumption") == 3
    assert delta("stamp_certificates_issued_total", type="production") == 9
    assert delta("stamp_certificates_rejected_total") == 0
    assert delta("stamp_certificates_failed_total") == 0
    assert delta("stamp_issue_end_to_end_seconds_count") == 12
    assert delta("stamp_issue_end_to_end_seconds_sum") > 0
    # Every certificate left each non-terminal state exactly once.
    for step in ("stored", "sent_to_registry", "issued_in_registry", "marked_as_issued"):
        assert delta("stamp_step_duration_seconds_count", step=step) == 12, step
    assert delta("stamp_wallet_requests_total", code="202") == 12
    assert delta("stamp_registry_requests_total", method="SendTransactions", code="OK") >= 1
    assert delta("stamp_registry_requests_total", method="GetTransactionStatus", code="OK") >= 12
    posted = delta(
        "stamp_http_request_duration_seconds_count", method="POST", route="/v1/certificates", status="202"
    )
    assert posted == 12
    assert delta("stamp_http_request_duration_seconds_count", route="/v1/recipients", status="201") == 3
    # The journey's cost, counted: every hand-off between the loop and an actor
    # (about 11 per certificate here; a fixed 20 ms tick would add ~100 a second) and
    # every statement (the test's own status reads included, so only counted).
    handoffs = delta("stamp_actor_handoffs_total")
    assert 0 < handoffs <= 20 * 12
    assert delta("stamp_actor_handoffs_total", direction="to_actor") > 0
    assert delta("stamp_db_round_trips_total") > 0


async def test_rejections_and_failures_are_counted_by_step(stack: Stack) -> None:
    before = await scrape(stack)
    rejected_recipient = await stack.create_recipient()
    rejected = certificate_body(rejected_recipient)
    stack.registry.force_failure(rejected["certificate"]["id"], "closed for maintenance")

    reference = stack.wallet.create_endpoint()
    async with stack.http.post(
        f"{stack.base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
    ) as response:
        failing_recipient = (await response.json())["id"]
    stack.wallet.disable_endpoint(reference)  # the wallet answers 400: a permanent failure
    failing = certificate_body(failing_recipient)
    try:
        states = await issue(stack, [rejected, failing])
    finally:
        stack.wallet.enable_endpoint(reference)
    assert states == {rejected["certificate"]["id"]: "rejected", failing["certificate"]["id"]: "failed"}
    after = await scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("stamp_certificates_received_total") == 2
    assert delta("stamp_certificates_rejected_total") == 1
    assert delta("stamp_certificates_failed_total", step="wallet") == 1
    assert delta("stamp_certificates_failed_total") == 1
    assert delta("stamp_certificates_issued_total") == 0
    assert delta("stamp_issue_end_to_end_seconds_count") == 0
    assert delta("stamp_wallet_requests_total", code="400") >= 1


async def test_sampled_gauges_show_actors_threads_loop_lag_and_states(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    await issue(stack, [certificate_body(recipient)])

    async def sampled() -> dict[Sample, float] | None:
        samples = await scrape(stack)
        delivered = value(samples, "stamp_certificates_in_state", state="delivered")
        rows = await stack.pool.fetchval("SELECT count(*) FROM certificates WHERE state = 'delivered'")
        return samples if delivered == rows >= 1 else None

    samples = await wait_until(
        sampled, timeout=metrics.STATE_INTERVAL_SECONDS + 5, interval=0.2, what="the state gauge"
    )
    for state in ("stored", "sent_to_registry", "rejected", "failed"):
        assert ("stamp_certificates_in_state", frozenset({("state", state)})) in samples
    assert value(samples, "stamp_live_actors", kind="supervisor") >= 1
    assert value(samples, "stamp_live_actors", kind="registry_gateway") >= 1
    assert ("stamp_mailbox_depth", frozenset({("kind", "certificate")})) in samples
    assert value(samples, "stamp_process_threads") > 1
    assert value(samples, "stamp_event_loop_lag_seconds_count") > 0
    # The process collector comes with the default registry.
    assert value(samples, "process_resident_memory_bytes") > 0


async def test_labels_carry_no_ids_and_unknown_paths_share_one_route_label(stack: Stack) -> None:
    recipient = await stack.create_recipient()
    body = certificate_body(recipient)
    await issue(stack, [body])
    async with stack.http.get(f"{stack.base}/v1/certificates/{REGISTRY}/{body['certificate']['id']}") as r:
        assert r.status == 200
    async with stack.http.get(f"{stack.base}/no/such/{body['certificate']['id']}") as r:
        assert r.status == 404
    samples = await scrape(stack)
    for name, labels in samples:
        for label, label_value in labels:
            assert not UUID.search(label_value), (name, label, label_value)
    assert (
        value(
            samples,
            "stamp_http_request_duration_seconds_count",
            method="GET",
            route="/v1/certificates/{registry}/{id}",
            status="200",
        )
        >= 1
    )
    assert (
        value(
            samples,
            "stamp_http_request_duration_seconds_count",
            method="GET",
            route="unmatched",
            status="404",
        )
        >= 1
    )


async def test_prometheus_text_by_default_and_openmetrics_on_request(stack: Stack) -> None:
    content_type, text = await scrape_text(stack)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert "# TYPE stamp_certificates_received_total counter" in text
    content_type, text = await scrape_text(stack, "application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_actor_kinds_are_snake_case_without_the_actor_suffix() -> None:
    class CertificateActor:
        pass

    class RegistryGateway:
        pass

    assert metrics.actor_kind(CertificateActor) == "certificate"
    assert metrics.actor_kind(RegistryGateway) == "registry_gateway"


async def test_crypto_backend_info_names_the_backend_in_use(stack: Stack) -> None:
    samples = await scrape(stack)
    in_use = {
        dict(labels)["backend"]: v
        for (name, labels), v in samples.items()
        if name == "stamp_crypto_backend_info"
    }
    assert in_use == {crypto_backend.active().name: 1.0}
