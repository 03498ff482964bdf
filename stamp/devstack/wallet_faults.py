"""Faults the wallet simulator can inject into the receive-slice API.

A fault replaces the normal answer to one request: an error status (optionally with
a body of the fault's choosing, or a huge one streamed lazily), a redirect, a hang, or
a dropped connection. Faults are armed either for the next N requests whatever their
endpoint (applied first, in order) or for one endpoint's requests (the next N, or
until cleared).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

FaultKind = Literal["status", "redirect", "hang", "drop"]
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


@dataclass(frozen=True, slots=True)
class Fault:
    """What the wallet does instead of answering normally.

    ``status``: answer ``status`` (400…599); the slice is not accepted. The body is a
    problem+json, or ``body`` (text) when given; with ``body_bytes`` the answer is that
    many bytes long (``body`` repeated, or ``x``), generated as it is sent, so a huge
    answer costs the simulator nothing. ``redirect``: answer ``status`` (301, 302, 303,
    307 or 308) with ``Location: location``; the slice is not accepted. ``hang``: wait
    ``seconds`` first, then accept and answer normally (``accept``) or answer 503.
    ``drop``: accept the slice (``accept``, the default) and close the connection
    without an answer — the sender cannot tell whether it arrived, the case that tempts
    a sender to deliver twice."""

    kind: FaultKind
    status: int = 500
    seconds: float = 0.0
    accept: bool = False
    location: str = ""
    body: str = ""
    body_bytes: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("status", "redirect", "hang", "drop"):
            raise ValueError(f"unknown fault kind {self.kind!r}")
        if self.kind == "status" and not 400 <= self.status <= 599:
            raise ValueError("an injected status must be 400…599")
        if self.kind == "status" and self.body_bytes < 0:
            raise ValueError("bodyBytes must be ≥ 0")
        if self.kind == "redirect" and self.status not in REDIRECT_STATUSES:
            raise ValueError(f"a redirect status must be one of {', '.join(map(str, REDIRECT_STATUSES))}")
        if self.kind == "redirect" and not self.location:
            raise ValueError("a redirect needs a location")
        if self.kind == "hang" and not self.seconds > 0:
            raise ValueError("a hang needs seconds > 0")

    @classmethod
    def respond(cls, status: int = 500, *, body: str = "", body_bytes: int = 0) -> Fault:
        return cls("status", status=status, body=body, body_bytes=body_bytes)

    @classmethod
    def redirect(cls, status: int, location: str) -> Fault:
        return cls("redirect", status=status, location=location)

    @classmethod
    def hang(cls, seconds: float, *, accept: bool = False) -> Fault:
        return cls("hang", seconds=seconds, accept=accept)

    @classmethod
    def drop(cls, *, accept: bool = True) -> Fault:
        return cls("drop", accept=accept)

    def as_json(self) -> dict[str, Any]:
        if self.kind == "status":
            extra: dict[str, Any] = {"body": self.body} if self.body else {}
            if self.body_bytes:
                extra["bodyBytes"] = self.body_bytes
            return {"kind": "status", "status": self.status, **extra}
        if self.kind == "redirect":
            return {"kind": "redirect", "status": self.status, "location": self.location}
        if self.kind == "hang":
            return {"kind": "hang", "seconds": self.seconds, "accept": self.accept}
        return {"kind": "drop", "accept": self.accept}


def fault_from_json(body: Mapping[str, Any]) -> Fault:
    """``{"kind": "status", "status": 503}`` (optional ``"body": "<text>"``,
    ``"bodyBytes": <length>``), ``{"kind": "redirect", "status": 307, "location":
    "<url>"}``, ``{"kind": "hang", "seconds": 5, "accept": false}`` or ``{"kind":
    "drop", "accept": true}``."""
    kind = body.get("kind")
    if kind == "status":
        text = body.get("body", "")
        if not isinstance(text, str):
            raise ValueError("body must be a string")
        return Fault.respond(
            _integer(body, "status", 500), body=text, body_bytes=_integer(body, "bodyBytes", 0)
        )
    if kind == "redirect":
        location = body.get("location")
        if not isinstance(location, str):
            raise ValueError("a redirect needs a location (a URL string)")
        return Fault.redirect(_integer(body, "status", 307), location)
    if kind == "hang":
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ValueError("a hang needs a number of seconds")
        return Fault.hang(float(seconds), accept=_flag(body, "accept", False))
    if kind == "drop":
        return Fault.drop(accept=_flag(body, "accept", True))
    raise ValueError("kind must be one of status, redirect, hang, drop, disable, enable, clear")


def _integer(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer")
    return value


def _flag(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


@dataclass(slots=True)
class _Armed:
    fault: Fault
    remaining: int | None  # None: until cleared


class FaultPlan:
    """The armed faults; endpoints are keyed by their 74-byte public key."""

    def __init__(self) -> None:
        self._next: deque[_Armed] = deque()
        self._by_endpoint: dict[bytes, deque[_Armed]] = {}
        self.injected = 0

    def arm_next(self, fault: Fault, count: int) -> None:
        if count > 0:
            self._next.append(_Armed(fault, count))

    def arm_for(self, key: bytes, fault: Fault, count: int | None) -> None:
        if count is None or count > 0:
            self._by_endpoint.setdefault(key, deque()).append(_Armed(fault, count))

    def take(self, key: bytes | None) -> Fault | None:
        """The fault for this request (``key``: its endpoint, if the body names one)."""
        queue = self._next
        if not queue and key is not None:
            queue = self._by_endpoint.get(key, deque())
        if not queue:
            return None
        armed = queue[0]
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                queue.popleft()
        self.injected += 1
        return armed.fault

    def clear(self, key: bytes | None = None) -> None:
        if key is None:
            self._next.clear()
            self._by_endpoint.clear()
        else:
            self._by_endpoint.pop(key, None)

    def as_json(self, describe: Callable[[bytes], dict[str, str]]) -> dict[str, Any]:
        return {
            "next": [{**a.fault.as_json(), "count": a.remaining} for a in self._next],
            "endpoints": [
                {**a.fault.as_json(), "count": a.remaining, **describe(key)}
                for key, armed in self._by_endpoint.items()
                for a in armed
            ],
            "injected": self.injected,
        }
