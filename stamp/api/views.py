"""JSON shapes of Stamp's answers (docs/api.md): camelCase, enums as strings, unix seconds
for periods, RFC 3339 for timestamps. Never R, salts or keys."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from stamp.domain import CERTIFICATE_TYPES


def json_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


def rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def certificate_summary(row: asyncpg.Record) -> dict[str, Any]:
    failure = None
    if row["failed_step"] is not None:
        failure = {"step": row["failed_step"], "reason": row["failure_reason"], "attempts": row["attempts"]}
    return {
        "id": row["id"],
        "registryName": row["registry_name"],
        "recipientId": row["recipient_id"],
        "meteringPointId": row["metering_point_id"],
        "type": CERTIFICATE_TYPES[row["certificate_type"]],
        "quantity": row["quantity"],
        "start": row["period_start"],
        "end": row["period_end"],
        "gridArea": row["grid_area"],
        "state": row["state"],
        "position": row["position"],
        "rejectionReason": row["rejection_reason"],
        "failure": failure,
        "transactionId": row["transaction_id"],
        "withdrawn": row["withdrawn"],
        "createdAt": rfc3339(row["created_at"]),
        "updatedAt": rfc3339(row["updated_at"]),
    }


def certificate_detail(row: asyncpg.Record, events: list[asyncpg.Record]) -> dict[str, Any]:
    view = certificate_summary(row)
    view["clearTextAttributes"] = dict(row["clear_attributes"])
    view["hashedAttributes"] = [{"key": k, "value": v} for k, v in row["hashed_attributes"]]
    if row["withdrawal_id"] is not None:
        view["withdrawal"] = withdrawal_view(row)
    view["events"] = [
        {"type": e["event_type"], "state": e["state"], "at": rfc3339(e["at"]), "detail": e["detail"]}
        for e in events
    ]
    return view


def withdrawal_view(row: asyncpg.Record) -> dict[str, Any]:
    """The certificate's withdrawal as the registry side sees it (docs/withdrawal.md):
    ``pending`` (waiting for the issuance, or being sent), ``committed``, ``failed``,
    ``moot``."""
    return {
        "id": row["withdrawal_id"],
        "state": row["withdrawal_state"],
        "reason": row["withdrawal_reason"],
        "transactionId": row["withdrawal_transaction_id"],
        "withdrawnAt": rfc3339(row["withdrawal_withdrawn_at"]),
        "updatedAt": rfc3339(row["withdrawal_updated_at"]),
    }


def encode_cursor(row: asyncpg.Record) -> str:
    raw = orjson.dumps([row["created_at"].isoformat(), row["registry_name"], row["id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    """Raises ValueError for anything that is not a cursor this API issued (a
    tampered one must be a 400, never reach the database as garbage)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, registry, certificate_id = orjson.loads(raw)
        when = datetime.fromisoformat(at).astimezone(UTC)
    except (ValueError, TypeError, OverflowError, orjson.JSONDecodeError) as exc:
        raise ValueError("not a valid cursor") from exc
    if not isinstance(registry, str) or "\x00" in registry or not isinstance(certificate_id, str):
        raise ValueError("not a valid cursor")
    if not _UUID.fullmatch(certificate_id):
        raise ValueError("not a valid cursor")
    return when, registry, certificate_id
