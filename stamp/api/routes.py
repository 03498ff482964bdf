"""Route handlers of the REST API (docs/api.md). Handlers never wait on an actor: they
write to PostgreSQL and *tell* the supervisor."""

from __future__ import annotations

import base64
import dataclasses
import uuid
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from actors.base import intake_request
from actors.bridge import tell_from_loop
from actors.messages import AdmitCertificate
from stamp import metrics, tracing
from stamp.api import problems
from stamp.api.requests import (
    differences,
    parse_limit,
    parse_new_certificate,
    parse_new_recipient,
    parse_recipient_patch,
    parse_since,
    parse_state_filter,
    parse_text_param,
    parse_uuid,
    read_json_body,
    request_digest,
)
from stamp.api.runtime import RUNTIME, Runtime
from stamp.api.views import (
    certificate_detail,
    certificate_summary,
    decode_cursor,
    encode_cursor,
    json_response,
)
from stamp.db import queries, withdrawals
from stamp.domain import CertificateContent, CertificateKey, Recipient, State
from stamp.gateways.endpoint_allow import REFUSED_AT_CREATION, check_endpoint

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()
operations = web.RouteTableDef()
"""Health probes: open even when authentication is on."""


def status_url(request: web.Request, registry: str, certificate_id: str) -> str:
    return f"{request.app[RUNTIME].settings.path_base}/v1/certificates/{registry}/{certificate_id}"


def _accepted(request: web.Request, key: CertificateKey, state: str) -> web.Response:
    """202 with the certificate's current state; Location is where to follow it."""
    url = status_url(request, key.registry, key.certificate_id)
    return json_response(
        {"id": key.certificate_id, "registryName": key.registry, "state": state, "statusUrl": url},
        status=202,
        headers={"Location": url},
    )


# --- recipients ---------------------------------------------------------------------


@routes.post("/v1/recipients")
async def create_recipient(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = await read_json_body(request, runtime.settings.max_body_bytes)
    new = parse_new_recipient(body)
    if not await check_endpoint(runtime.settings.wallet_endpoint_allow, new.wallet_endpoint_url):
        raise problems.ValidationProblem.single(
            "walletEndpointReference.endpoint",
            REFUSED_AT_CREATION,
        )
    recipient = Recipient(
        str(uuid.uuid4()), new.wallet_endpoint_version, new.wallet_endpoint_url, new.wallet_public_key
    )
    await queries.insert_recipient(runtime.pool, recipient)
    runtime.recipients.remember(recipient)
    location = f"{runtime.settings.path_base}/v1/recipients/{recipient.id}"
    return json_response({"id": recipient.id}, status=201, headers={"Location": location})


@routes.get("/v1/recipients/{id}")
async def get_recipient(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    recipient_id = parse_uuid(request.match_info["id"], "id")
    recipient = await queries.get_recipient(runtime.pool, recipient_id)
    if recipient is None:
        raise problems.NotFound(f"recipient {recipient_id} not found")
    return json_response(_recipient_view(recipient))


@routes.patch("/v1/recipients/{id}")
async def move_recipient(request: web.Request) -> web.Response:
    """Move a recipient's wallet endpoint. Deliveries read the endpoint when they send,
    so every later attempt, by any Stamp process, goes to the new one."""
    runtime = request.app[RUNTIME]
    recipient_id = parse_uuid(request.match_info["id"], "id")
    body = await read_json_body(request, runtime.settings.max_body_bytes)
    patch = parse_recipient_patch(body)
    current = await queries.get_recipient(runtime.pool, recipient_id)
    if current is None:
        raise problems.NotFound(f"recipient {recipient_id} not found")
    if patch.wallet_public_key is not None and patch.wallet_public_key != current.wallet_public_key:
        raise problems.Conflict(
            "a recipient's public key never changes; a wallet with another key is a new recipient",
            differences=["walletEndpointReference.publicKey"],
        )
    if not await check_endpoint(runtime.settings.wallet_endpoint_allow, patch.wallet_endpoint_url):
        raise problems.ValidationProblem.single("walletEndpointReference.endpoint", REFUSED_AT_CREATION)
    moved = await queries.move_recipient_endpoint(runtime.pool, recipient_id, patch.wallet_endpoint_url)
    if moved is None:
        raise problems.NotFound(f"recipient {recipient_id} not found")
    runtime.recipients.forget(recipient_id)
    if moved.wallet_endpoint_url != current.wallet_endpoint_url:
        log.info("recipient.moved", recipient_id=recipient_id)  # URLs may name hosts: not logged
    return json_response(_recipient_view(moved))


def _recipient_view(recipient: Recipient) -> dict[str, object]:
    return {
        "id": recipient.id,
        "walletEndpointReference": {
            "version": recipient.wallet_endpoint_version,
            "endpoint": recipient.wallet_endpoint_url,
            "publicKey": _b64(recipient.wallet_public_key),
        },
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- certificates -------------------------------------------------------------------


@routes.post("/v1/certificates")
async def create_certificate(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    if runtime.draining:
        raise problems.Unavailable("Stamp is shutting down", retry_after=5)
    body = await read_json_body(request, runtime.settings.max_body_bytes)
    # Counted only once its body is in hand: a burst of them makes the actors yield to
    # the loop and holds the pipeline's loop work back, which a handful of clients that
    # send their bodies slowly must not be able to switch on.
    with intake_request():
        return await _create_certificate(request, body)


async def _create_certificate(request: web.Request, body: dict[str, Any]) -> web.Response:
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    new = parse_new_certificate(
        body,
        registries=settings.registries.keys(),
        grid_areas=settings.issuer_keys.keys(),
        max_attributes=settings.max_attributes,
        max_attribute_length=settings.max_attribute_length,
    )
    row = queries.NewCertificateRow(new, request_digest(new))
    if runtime.backlog.full:
        existing = await withdrawals.find_conflicting(runtime.pool, row)
        if existing is None:
            raise problems.Unavailable(
                f"backlog of {runtime.backlog.count} certificates in progress exceeds the limit "
                f"{settings.max_backlog}; retry later",
                retry_after=5,
            )
        return _answer_existing(request, new, existing)
    if await runtime.recipients.get(new.recipient_id) is None:
        raise problems.NotFound(f"recipient {new.recipient_id} not found", field="recipientId")
    # Admit at once when a slot is free: the row is then leased to this instance, so
    # another instance sharing the database does not claim it too. A full house
    # leaves the row unleased, for whichever supervisor has room first. The slot is
    # taken now, before the insert is awaited, so a burst cannot overshoot the bound.
    if tracing.ENABLED:  # the certificate's trace is this request's: stored with it
        traced = tracing.intake(new.key, new.recipient_id, own_trace=False)
        row = dataclasses.replace(row, traceparent=traced)
    admit = runtime.live.take_slots(settings.max_in_flight) == 1
    lease = queries.Lease(settings.instance_id, settings.lease_seconds) if admit else None
    try:
        stored = await runtime.batcher.fetch(
            queries.INSERT_CERTIFICATE,
            queries.insert_certificate_args(row, lease),
            (new.key.registry, new.key.certificate_id),
        )
        record = queries.stored_record(stored)
    except (asyncpg.UniqueViolationError, asyncpg.ExclusionViolationError):
        record = None  # ON CONFLICT DO NOTHING skips these; a conflict all the same
    except BaseException:
        if admit:
            runtime.live.release_slots()
        raise
    if record is None:
        if admit:
            runtime.live.release_slots()
        existing = await withdrawals.find_conflicting(runtime.pool, row)
        if existing is None:  # deleted in between cannot happen; treat as a conflict to be safe
            raise problems.Conflict("the certificate conflicts with another one")
        return _answer_existing(request, new, existing)
    runtime.backlog.added()
    metrics.certificate_received(new.key)
    # The first transition's line names the request that caused it (request_id is
    # bound by the problem middleware); the certificate actor logs the ones after it.
    log.info(
        "certificate.transitioned",
        certificate_id=new.key.certificate_id,
        registry=new.key.registry,
        recipient_id=new.recipient_id,
        state=State.STORED.value,
    )
    if admit:
        # Only with a slot, so the supervisor's mailbox stays bounded; the slot is
        # the supervisor's to release from now on.
        tell_from_loop(runtime.supervisor, AdmitCertificate(record))
    else:
        runtime.live.backlog_waiting = True
    return _accepted(request, new.key, State.STORED.value)


def _answer_existing(request: web.Request, new: CertificateContent, existing: asyncpg.Record) -> web.Response:
    """An identical re-post is answered like the first post; anything else is a 409."""
    return _accepted(request, new.key, judge_existing(new, existing))


def judge_existing(new: CertificateContent, existing: asyncpg.Record) -> str:
    """The state of the stored certificate ``new`` repeats identically; else raises the
    409 that says why not. A withdrawn certificate is never issued again, not even for
    an identical re-post."""
    same_key = existing["registry_name"] == new.key.registry and existing["id"] == new.key.certificate_id
    if same_key and existing["withdrawn"]:
        raise problems.Conflict(
            f"certificate {new.key} was withdrawn; certify the period again with a new certificate id"
        )
    if same_key and bytes(existing["request_digest"]) == request_digest(new):
        state: str = existing["state"]
        return state
    if same_key:
        raise problems.Conflict(
            f"certificate {new.key} already exists with different content",
            differences=differences(new, queries.content_from_row(existing)),
        )
    # Another live certificate of the metering point holds (part of) the period.
    holder = f"{existing['registry_name']}/{existing['id']}"
    start, end = existing["period_start"], existing["period_end"]
    moved = ["certificate.id"]
    if start != new.start:
        moved.append("certificate.start")
    if end != new.end:
        moved.append("certificate.end")
    raise problems.Conflict(
        f"metering point {new.metering_point_id} already has certificate {holder} for the period "
        f"[{start}, {end}), which overlaps [{new.start}, {new.end})",
        differences=moved,
        conflicting_certificate={
            "registryName": existing["registry_name"],
            "id": existing["id"],
            "start": start,
            "end": end,
        },
    )


@routes.get("/v1/certificates/{registry}/{id}")
async def get_certificate(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    certificate_id = parse_uuid(request.match_info["id"], "id")
    key = CertificateKey(parse_text_param(request.match_info["registry"], "registryName"), certificate_id)
    found = await queries.get_view(runtime.pool, key)
    if found is None:
        raise problems.NotFound(f"certificate {key} not found")
    row, events = found
    return json_response(certificate_detail(row, events))


@routes.get("/v1/certificates")
async def list_certificates(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    query = {k.lower(): v for k, v in request.query.items()}
    limit = parse_limit(query.get("limit"), default=100, maximum=1000)
    state = parse_state_filter(query.get("state"))
    recipient_id = parse_uuid(query["recipientid"], "recipientId") if query.get("recipientid") else None
    after = None
    if query.get("cursor"):
        try:
            after = decode_cursor(query["cursor"])
        except ValueError as exc:
            raise problems.ValidationProblem.single("cursor", str(exc)) from exc
    rows = await queries.list_certificates(
        runtime.pool,
        state=state,
        recipient_id=recipient_id,
        metering_point_id=parse_text_param(query["meteringpointid"], "meteringPointId")
        if query.get("meteringpointid")
        else None,
        after=after,
        limit=limit + 1,
    )
    page, more = rows[:limit], len(rows) > limit
    return json_response(
        {
            "result": [certificate_summary(r) for r in page],
            "metadata": {
                "count": len(page),
                "limit": limit,
                "nextCursor": encode_cursor(page[-1]) if more else None,
            },
        }
    )


@routes.post("/v1/certificates/{registry}/{id}/retry")
async def retry_certificate(request: web.Request) -> web.Response:
    """Operator retry of a failed certificate, from the step that failed."""
    runtime = request.app[RUNTIME]
    key = CertificateKey(
        parse_text_param(request.match_info["registry"], "registryName"),
        parse_uuid(request.match_info["id"], "id"),
    )
    async with runtime.pool.acquire() as conn:
        outcome = await queries.retry_failed(conn, key)
    if not outcome.found:
        raise problems.NotFound(f"certificate {key} not found")
    if outcome.state is None:
        raise problems.Conflict(
            f"certificate {key} is {outcome.previous_state}; only a failed certificate can be retried"
        )
    record = await queries.get_record(runtime.pool, key)
    if record is not None and runtime.live.take_slots(runtime.settings.max_in_flight) == 1:
        tell_from_loop(runtime.supervisor, AdmitCertificate(record))
    else:
        runtime.live.backlog_waiting = True  # the row is unleased: the sweep takes it up
    return _accepted(request, key, outcome.state.value)


@routes.post("/v1/certificates/{registry}/{id}/redeliver")
async def redeliver_certificate(request: web.Request) -> web.Response:
    """Deliver a delivered certificate's slice again, to its recipient's endpoint as it
    is now. The request is stored before the 202; the certificate's actor then
    delivers it with the retries of any delivery."""
    runtime = request.app[RUNTIME]
    key = CertificateKey(
        parse_text_param(request.match_info["registry"], "registryName"),
        parse_uuid(request.match_info["id"], "id"),
    )
    found = await queries.certificate_state(runtime.pool, key)
    if found is None:
        raise problems.NotFound(f"certificate {key} not found")
    state, withdrawn = found
    if withdrawn:
        raise problems.Conflict(f"certificate {key} is withdrawn; its slice is not delivered again")
    if state is not State.DELIVERED:
        raise problems.Conflict(
            f"certificate {key} is {state.value}; only a delivered certificate can be re-delivered"
        )
    outcomes = await queries.request_redelivery(runtime.pool, key=key)
    if not outcomes or outcomes[0].outcome is queries.Redelivery.WITHDRAWN:
        raise problems.Conflict(f"certificate {key} changed meanwhile; it is not delivered again")
    await _drive_redeliveries(runtime, [o.key for o in outcomes if o.outcome is queries.Redelivery.REQUESTED])
    return json_response(
        _redelivery_view(request, outcomes[0]),
        status=202,
        headers={"Location": status_url(request, key.registry, key.certificate_id)},
    )


@routes.post("/v1/recipients/{id}/redeliver")
async def redeliver_recipient(request: web.Request) -> web.Response:
    """Deliver again every delivered certificate of a recipient (a wallet restored from
    a backup), optionally only those delivered since a time; reported one by one."""
    runtime = request.app[RUNTIME]
    recipient_id = parse_uuid(request.match_info["id"], "id")
    query = {k.lower(): v for k, v in request.query.items()}
    since = parse_since(query.get("since"))
    if await queries.get_recipient(runtime.pool, recipient_id) is None:
        raise problems.NotFound(f"recipient {recipient_id} not found")
    outcomes = await queries.request_redelivery(
        runtime.pool, recipient_id=recipient_id, delivered_since=since
    )
    await _drive_redeliveries(runtime, [o.key for o in outcomes if o.outcome is queries.Redelivery.REQUESTED])
    return json_response(
        {"result": [_redelivery_view(request, o) for o in outcomes], "metadata": {"count": len(outcomes)}},
        status=202,
    )


def _redelivery_view(request: web.Request, requested: queries.RedeliveryRequested) -> dict[str, object]:
    key = requested.key
    return {
        "id": key.certificate_id,
        "registryName": key.registry,
        "redelivery": requested.outcome.value,
        "statusUrl": status_url(request, key.registry, key.certificate_id),
    }


async def _drive_redeliveries(runtime: Runtime, keys: list[CertificateKey]) -> None:
    """Start one re-delivery at once when a slot is free; the rest are rows nobody
    drives, which the backlog sweep (of any Stamp process) takes up."""
    if len(keys) == 1 and runtime.live.take_slots(runtime.settings.max_in_flight) == 1:
        record = await queries.get_record(runtime.pool, keys[0])
        if record is not None:
            tell_from_loop(runtime.supervisor, AdmitCertificate(record))
            return
        runtime.live.release_slots()
    if keys:
        runtime.live.backlog_waiting = True


# --- operations ---------------------------------------------------------------------


@operations.get("/health/live")
async def live(request: web.Request) -> web.Response:
    return json_response({"status": "live"})


@operations.get("/health/ready")
async def ready(request: web.Request) -> web.Response:
    runtime: Runtime = request.app[RUNTIME]
    checks = await runtime.readiness()
    ok = all(checks.values())
    return json_response(
        {"status": "ready" if ok else "not ready", "checks": checks}, status=200 if ok else 503
    )
