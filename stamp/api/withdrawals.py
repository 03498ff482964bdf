"""Withdrawal routes (docs/api.md "Withdrawal", docs/withdrawal.md), compatible with the
existing Stamp: withdraw a certificate at any time after intake, and the feed of
withdrawals that wallets poll.

The handler decides and persists under the feed lock (a withdrawal id is visible
only after every smaller one), signs the ``WithdrawnEvent`` in between (an Ed25519
signature, microseconds), and only after the commit tells the withdrawal actor to get
it into the registry."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from actors.bridge import tell_from_loop
from actors.messages import DriveWithdrawal
from stamp.api import problems
from stamp.api.requests import parse_int_param, parse_limit, parse_text_param, parse_uuid
from stamp.api.runtime import RUNTIME
from stamp.api.views import json_response, rfc3339
from stamp.crypto.transactions import build_withdrawn_transaction
from stamp.db import withdrawals
from stamp.db.queries import Lease
from stamp.domain import CertificateKey
from stamp.withdrawal import Course, Withdrawal, WithdrawalState, course, withdrawal_refusal

routes = web.RouteTableDef()

MAX_ID = 2**63 - 1
MAX_SKIP = 2**31 - 1


def _withdrawal_json(withdrawal_id: int, key: CertificateKey, withdrawn_at: datetime) -> dict[str, object]:
    return {
        "id": withdrawal_id,
        "registryName": key.registry,
        "certificateId": key.certificate_id,
        "withdrawnDate": rfc3339(withdrawn_at),
    }


@routes.post("/v1/certificates/{registry}/{id}/withdraw")
async def withdraw_certificate(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    settings = runtime.settings
    if runtime.draining:
        raise problems.Unavailable("Stamp is shutting down", retry_after=5)
    registry = parse_text_param(request.match_info["registry"], "registryName")
    key = CertificateKey(registry, parse_uuid(request.match_info["id"], "id"))
    lease = Lease(settings.instance_id, settings.lease_seconds)
    async with runtime.pool.acquire() as conn, conn.transaction():
        target = await withdrawals.lock_target(conn, key)
        if target is None:
            raise problems.NotFound(f"certificate {key} not found")
        if target.withdrawal_id is not None:
            if target.withdrawal_state is not WithdrawalState.FAILED:
                raise problems.Conflict(
                    f"certificate {key} is already withdrawn (withdrawal {target.withdrawal_id}, "
                    f"{target.withdrawal_state})"
                )
            # The registry did not take it: send the same persisted transaction again.
            redriven = await withdrawals.redrive_failed(
                conn, target.withdrawal_id, lease, target.withdrawal_reason
            )
            assert redriven is not None  # failed, and the row is locked
            withdrawal, check_first, drive = redriven, True, True
        else:
            refusal = withdrawal_refusal(key, target.state)
            if refusal is not None:
                raise problems.Conflict(refusal)
            issuer_key = settings.issuer_keys.get(target.grid_area)
            if issuer_key is None:
                raise problems.Unavailable(
                    f"no issuer key is configured for grid area {target.grid_area}: "
                    "Stamp cannot sign the withdrawal",
                    retry_after=60,
                )
            # Signed and persisted now, whatever the state: every later send (once the
            # issuance is committed, after any restart) sends these very bytes.
            signed = build_withdrawn_transaction(key.registry, key.certificate_id, issuer_key)
            now = course(target.state, target.failed_step, target.has_transaction)
            withdrawal = await withdrawals.insert_withdrawal(
                conn, key, signed.transaction, signed.transaction_id, lease if now is Course.SEND else None
            )
            if now is Course.MOOT:
                await withdrawals.settle_moot(conn, withdrawal.id)
            check_first = False
            drive = now is Course.SEND
    if drive:
        _drive(request, withdrawal, check_first)
    # Otherwise the withdrawal waits, unleased, for the issuance: the withdrawal actor's
    # sweep claims it once the registry committed the certificate.
    return json_response(_withdrawal_json(withdrawal.id, key, withdrawal.withdrawn_at), status=201)


def _drive(request: web.Request, withdrawal: Withdrawal, check_first: bool) -> None:
    # Told only after the commit; were the actor gone, its next sweep after a restart
    # (or another instance, once the lease expires) picks the withdrawal up.
    actor = request.app[RUNTIME].withdrawals
    if actor is not None:
        tell_from_loop(actor, DriveWithdrawal(withdrawal, check_first))


@routes.get("/v1/certificates/withdrawn")
async def list_withdrawn(request: web.Request) -> web.Response:
    """The feed wallets poll: withdrawals after ``lastWithdrawnId``, in id order."""
    runtime = request.app[RUNTIME]
    query = {k.lower(): v for k, v in request.query.items()}
    last_id = parse_int_param(query.get("lastwithdrawnid"), "lastWithdrawnId", default=0, maximum=MAX_ID)
    skip = parse_int_param(query.get("skip"), "skip", default=0, maximum=MAX_SKIP)
    limit = parse_limit(query.get("limit"), default=100, maximum=1000)
    async with runtime.pool.acquire() as conn:
        page = await withdrawals.feed(conn, after_id=last_id, skip=skip, limit=limit)
    result = [
        _withdrawal_json(
            row["id"], CertificateKey(row["registry_name"], row["certificate_id"]), row["withdrawn_at"]
        )
        for row in page.rows
    ]
    return json_response(
        {
            "result": result,
            "metadata": {"count": len(result), "offset": skip, "limit": limit, "total": page.total},
        }
    )
