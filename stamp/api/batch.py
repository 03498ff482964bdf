"""``POST /v1/certificates/batch``: many certificates in one request (docs/api.md,
"Batch intake").

Every item is exactly the body of ``POST /v1/certificates`` and is judged on its own:
the answer (200 whenever the batch was taken) reports each item in request order as
``accepted``, ``alreadyAccepted`` or ``failed`` with the problem the single route would
have answered. The items that collide with nothing are stored by one statement; the
refusals that concern the batch as a whole (draining, the backlog cannot take it, the
body or item count over its limit) write nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from actors.bridge import tell_from_loop
from actors.messages import AdmitCertificate
from stamp import metrics, tracing
from stamp.api import problems
from stamp.api.batch_items import read_plain_item
from stamp.api.requests import parse_batch, parse_new_certificate, read_json_body, request_digest
from stamp.api.routes import judge_existing, status_url
from stamp.api.runtime import RUNTIME
from stamp.api.views import json_response
from stamp.db import batch_intake
from stamp.db.queries import NewCertificateRow
from stamp.domain import CertificateContent, CertificateKey, State

log = structlog.get_logger(__name__)

routes = web.RouteTableDef()

DEADLOCK_RETRIES = 3
"""Two batches sharing certificates in different orders may deadlock each other;
PostgreSQL aborts one, which wrote nothing and is simply run again."""


@routes.post("/v1/certificates/batch")
async def create_certificates(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    if runtime.draining:
        raise problems.Unavailable("Stamp is shutting down", retry_after=5)
    body = await read_json_body(request, settings.max_batch_body_bytes)
    items = parse_batch(body, max_items=settings.max_batch)
    answers: list[dict[str, Any] | None] = [None] * len(items)

    limits: dict[str, Any] = {
        "registries": settings.registries.keys(),
        "grid_areas": settings.issuer_keys.keys(),
        "max_attributes": settings.max_attributes,
        "max_attribute_length": settings.max_attribute_length,
    }
    parsed: list[tuple[int, CertificateContent]] = []
    for index, item in enumerate(items):
        # The plainly valid item (nearly all of them) is read without the general
        # parser; any other goes to it, so a problem is the single route's, verbatim.
        new = read_plain_item(item, **limits)
        if new is None:
            try:
                new = parse_new_certificate(item, **limits)
            except problems.ValidationProblem as problem:
                answers[index] = _failed(index, problem)
                continue
        parsed.append((index, new))

    known = await runtime.recipients.get_many(new.recipient_id for _, new in parsed)
    # The first item of each key goes into the insert; a later one with the same key
    # is judged against whatever holds the key once the insert is done.
    candidates: list[tuple[int, CertificateContent, NewCertificateRow]] = []
    repeats: list[tuple[int, CertificateContent, NewCertificateRow]] = []
    keys_seen: set[CertificateKey] = set()
    for index, new in parsed:
        if new.recipient_id not in known:
            answers[index] = _failed(
                index, problems.NotFound(f"recipient {new.recipient_id} not found", field="recipientId")
            )
            continue
        key = new.key
        (repeats if key in keys_seen else candidates).append(
            (index, new, NewCertificateRow(new, request_digest(new)))
        )
        keys_seen.add(key)

    if candidates and runtime.backlog.count + len(candidates) > settings.max_backlog:
        # Near the limit, count only what would be new: a repeated batch is answered.
        held = await batch_intake.find_conflicts(runtime.pool, [row for _, _, row in candidates])
        new_count = sum(1 for existing in held if existing is None)
        if runtime.backlog.count + new_count > settings.max_backlog:
            raise problems.Unavailable(
                f"backlog of {runtime.backlog.count} certificates in progress cannot take {new_count} "
                f"more within the limit {settings.max_backlog}; retry later (nothing of this batch was "
                "stored)",
                retry_after=5,
            )

    batch_id = uuid.uuid4().hex
    stored = await _store(request, [row for _, _, row in candidates], batch_id)
    unstored = list(repeats)
    for candidate in candidates:
        index, new, _ = candidate
        key = new.key
        if key in stored.recipients:
            answers[index] = _accepted(request, index, "accepted", key, State.STORED.value)
        else:
            unstored.append(candidate)
    conflicts = await batch_intake.find_conflicts(runtime.pool, [row for _, _, row in unstored])
    for (index, new, _), existing in zip(unstored, conflicts, strict=True):
        if existing is None:  # the holder went away in between; the client may post it again
            answers[index] = _failed(index, problems.Conflict("the certificate conflicts with another one"))
            continue
        try:
            state = judge_existing(new, existing)
        except problems.Problem as problem:
            answers[index] = _failed(index, problem)
        else:
            key = new.key
            answers[index] = _accepted(request, index, "alreadyAccepted", key, state)

    every = [answer for answer in answers if answer is not None]
    assert len(every) == len(items)
    counts = {"accepted": 0, "alreadyAccepted": 0, "failed": 0}
    for answer in every:
        counts[answer["outcome"]] += 1
    # One line for the batch instead of one `certificate.transitioned` per stored
    # certificate (that was the largest cost left in the loop): each stored
    # certificate's CertificateStored event names this batch_id, and the line names
    # the request (request_id is bound by the problem middleware).
    log.info(
        "certificates.batch_stored",
        batch_id=batch_id,
        items=len(items),
        accepted=counts["accepted"],
        already_accepted=counts["alreadyAccepted"],
        failed=counts["failed"],
        admitted=len(stored.leased),
    )
    if stored.recipients and log.is_enabled_for(logging.DEBUG):
        log.debug("certificates.batch_stored_ids", batch_id=batch_id, ids=[str(k) for k in stored.recipients])
    return json_response({**counts, "items": every})


async def _store(
    request: web.Request, rows: list[NewCertificateRow], batch_id: str
) -> batch_intake.StoredBatch:
    """Store ``rows`` in one statement, admit those a free slot allows at once, and leave
    the rest ``stored`` and unleased for whichever supervisor has room first."""
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    if not rows:
        return batch_intake.StoredBatch({}, [])
    if tracing.ENABLED:  # a trace per certificate, linked to this request's
        rows = [
            dataclasses.replace(
                r, traceparent=tracing.intake(r.content.key, r.content.recipient_id, own_trace=True)
            )
            for r in rows
        ]
    # Slots are taken before the insert is awaited, as the single route does, so a burst
    # of batches cannot overshoot STAMP_MAX_IN_FLIGHT; those that go unused (the row
    # collided) are given back after.
    slots = runtime.live.take_slots(settings.max_in_flight, len(rows))
    leased = [i < slots for i in range(len(rows))]
    try:
        for attempt in range(DEADLOCK_RETRIES + 1):
            try:
                stored = await batch_intake.insert_batch(
                    runtime.pool,
                    rows,
                    leased,
                    lease_owner=settings.instance_id,
                    lease_seconds=settings.lease_seconds,
                    batch_id=batch_id,
                )
                break
            except asyncpg.DeadlockDetectedError:
                if attempt == DEADLOCK_RETRIES:
                    raise
                log.info("intake.batch_deadlock_retried", attempt=attempt + 1)
    except BaseException:
        runtime.live.release_slots(slots)
        raise
    if slots > len(stored.leased):
        runtime.live.release_slots(slots - len(stored.leased))
    runtime.backlog.added(len(stored.recipients))
    metrics.certificates_received(stored.recipients.keys())
    for record in stored.leased:
        # The slot is the supervisor's to release from now on.
        tell_from_loop(runtime.supervisor, AdmitCertificate(record))
    if len(stored.recipients) > len(stored.leased):
        runtime.live.backlog_waiting = True
    return stored


def _accepted(
    request: web.Request, index: int, outcome: str, key: CertificateKey, state: str
) -> dict[str, Any]:
    return {
        "index": index,
        "status": 202,
        "outcome": outcome,
        "id": key.certificate_id,
        "registryName": key.registry,
        "state": state,
        "statusUrl": status_url(request, key.registry, key.certificate_id),
    }


def _failed(index: int, problem: problems.Problem) -> dict[str, Any]:
    return {"index": index, "status": problem.status, "outcome": "failed", "problem": problem.to_json()}
