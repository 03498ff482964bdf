"""The load driver: posts certificates as an issuing body would, on a schedule.

Two ways to arrive:

- closed: a fixed total as fast as possible, ``concurrency`` requests in flight;
- open: a given arrival rate, constant or in steps, whatever the answers. Each
  request's latency counts from the moment it was *due*, not from when a connection
  was free, so a server that falls behind shows it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

REGISTRY = "Narnia"
GRID_AREA = "DK1"
PERIOD_START = 1_735_689_600  # 2025-01-01T00:00:00Z
JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Schedule:
    """``steps`` empty: closed, ``total`` requests with ``concurrency`` in flight.
    Otherwise open arrivals: ``(rate per second, seconds)`` one step after the other."""

    total: int
    concurrency: int = 64
    steps: tuple[tuple[float, float], ...] = ()

    @staticmethod
    def closed(total: int, concurrency: int) -> Schedule:
        return Schedule(max(0, total), max(1, concurrency))

    @staticmethod
    def constant(rate: float, total: int) -> Schedule:
        return Schedule(max(0, total), steps=((rate, total / rate),))

    @staticmethod
    def stepped(steps: Sequence[tuple[float, float]]) -> Schedule:
        return Schedule(sum(int(rate * seconds) for rate, seconds in steps), steps=tuple(steps))

    @property
    def open(self) -> bool:
        return bool(self.steps)

    def offsets(self) -> list[float]:
        """When each request of an open schedule is due, in seconds from the start."""
        out: list[float] = []
        start = 0.0
        for rate, seconds in self.steps:
            count = int(rate * seconds)
            out.extend(start + i / rate for i in range(count))
            start += seconds
        return out[: self.total]

    def describe(self) -> str:
        if not self.open:
            return f"{self.total} certificates as fast as possible, {self.concurrency} in flight"
        return "open arrivals: " + ", then ".join(f"{r:g}/s for {s:g} s" for r, s in self.steps)


@dataclass(slots=True)
class Outcome:
    """One POST: its certificate, HTTP status (0: no answer), latency from when it was
    due, and the wall-clock time of the answer (compared with the wallet's receipt)."""

    certificate_id: str
    recipient: int
    status: int
    latency: float
    answered_at: float


class CertificateFactory:
    """Request bodies: unique ids, metering points and periods within one run."""

    def __init__(self, recipient_ids: Sequence[str], run: str | None = None) -> None:
        self.recipient_ids = list(recipient_ids)
        self.run = run or f"{uuid.uuid4().int % 10**8:08d}"

    def body(self, index: int) -> tuple[str, int, bytes]:
        recipient = index % len(self.recipient_ids)
        certificate_id = str(uuid.uuid4())
        start = PERIOD_START + 3600 * (index // len(self.recipient_ids))
        body: dict[str, Any] = {
            "recipientId": self.recipient_ids[recipient],
            "registryName": REGISTRY,
            # One metering point per recipient and run: (point, period) is unique.
            "meteringPointId": f"57{self.run}{recipient:08d}",
            "certificate": {
                "id": certificate_id,
                "type": "production" if index % 4 else "consumption",
                "quantity": 1000 + (index * 37) % 5000,
                "start": start,
                "end": start + 3600,
                "gridArea": GRID_AREA,
                "clearTextAttributes": {"fuelCode": "F01040100", "techCode": "T010000"},
                "hashedAttributes": [{"key": "assetId", "value": f"57123456789{index % 10**7:07d}"}],
            },
        }
        return certificate_id, recipient, orjson.dumps(body)


async def post_once(
    http: aiohttp.ClientSession, url: str, body: bytes, due: float, certificate_id: str, recipient: int
) -> Outcome:
    try:
        async with http.post(url, data=body, headers=JSON_HEADERS) as response:
            await response.read()
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        status = 0
    return Outcome(certificate_id, recipient, status, time.monotonic() - due, time.time())


async def drive(
    http: aiohttp.ClientSession,
    targets: Sequence[str],
    schedule: Schedule,
    make_body: Callable[[int], tuple[str, int, bytes]],
    on_outcome: Callable[[Outcome], None] | None = None,
    path: str = "/v1/certificates",
) -> list[Outcome]:
    """Post ``schedule.total`` bodies, round robin over ``targets``; every outcome in
    order of completion."""
    urls = [t.rstrip("/") + path for t in targets]
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    if schedule.open:
        await _drive_open(http, urls, schedule, make_body, record)
    else:
        await _drive_closed(http, urls, schedule, make_body, record)
    return outcomes


async def _drive_closed(
    http: aiohttp.ClientSession,
    urls: list[str],
    schedule: Schedule,
    make_body: Callable[[int], tuple[str, int, bytes]],
    record: Callable[[Outcome], None],
) -> None:
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < schedule.total:
            index = next_index
            next_index += 1
            certificate_id, recipient, body = make_body(index)
            due = time.monotonic()
            record(await post_once(http, urls[index % len(urls)], body, due, certificate_id, recipient))

    await asyncio.gather(*(worker() for _ in range(min(schedule.concurrency, max(1, schedule.total)))))


async def _drive_open(
    http: aiohttp.ClientSession,
    urls: list[str],
    schedule: Schedule,
    make_body: Callable[[int], tuple[str, int, bytes]],
    record: Callable[[Outcome], None],
) -> None:
    tasks: set[asyncio.Task[None]] = set()

    async def send(index: int, due: float) -> None:
        certificate_id, recipient, body = make_body(index)
        record(await post_once(http, urls[index % len(urls)], body, due, certificate_id, recipient))

    started = time.monotonic()
    offsets = schedule.offsets()
    index = 0
    while index < len(offsets):
        now = time.monotonic()
        # Everything due by now goes out in this wake-up: at high rates one timer per
        # request would cost more than the requests.
        while index < len(offsets) and started + offsets[index] <= now:
            task = asyncio.create_task(send(index, started + offsets[index]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            index += 1
        if index < len(offsets):
            await asyncio.sleep(max(0.0, started + offsets[index] - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)


@dataclass(slots=True)
class BatchOutcome:
    """One batch POST: its HTTP status (0: no answer), size and latency."""

    status: int
    size: int
    latency: float


async def post_batch(
    http: aiohttp.ClientSession, url: str, items: Sequence[tuple[str, int, bytes]]
) -> tuple[BatchOutcome, list[Outcome]]:
    """POST one batch; the batch's outcome and one Outcome per item, with the item's
    own status from the answer (or the batch's status when it was refused whole)."""
    body = b'{"certificates":[' + b",".join(item for _, _, item in items) + b"]}"
    started = time.monotonic()
    statuses: list[int] = []
    try:
        async with http.post(url, data=body, headers=JSON_HEADERS) as response:
            data = await response.read()
            status = response.status
        if status == 200:
            statuses = [entry["status"] for entry in orjson.loads(data)["items"]]
    except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError, KeyError, TypeError):
        status = 0
    latency = time.monotonic() - started
    answered_at = time.time()
    if len(statuses) != len(items):
        statuses = [status if status != 200 else 0] * len(items)
    outcomes = [
        Outcome(certificate_id, recipient, item_status, latency, answered_at)
        for (certificate_id, recipient, _), item_status in zip(items, statuses, strict=True)
    ]
    return BatchOutcome(status, len(items), latency), outcomes


async def drive_batches(
    http: aiohttp.ClientSession,
    targets: Sequence[str],
    total: int,
    batch_size: int,
    concurrency: int,
    make_body: Callable[[int], tuple[str, int, bytes]],
    on_outcome: Callable[[Outcome], None] | None = None,
) -> tuple[list[Outcome], list[BatchOutcome]]:
    """Post ``total`` certificates in batches of ``batch_size`` to the batch route, as
    fast as possible with ``concurrency`` batches in flight, round robin over ``targets``."""
    urls = [t.rstrip("/") + "/v1/certificates/batch" for t in targets]
    outcomes: list[Outcome] = []
    batches: list[BatchOutcome] = []
    starts = list(range(0, max(0, total), max(1, batch_size)))
    next_batch = 0

    async def worker() -> None:
        nonlocal next_batch
        while next_batch < len(starts):
            number = next_batch
            next_batch += 1
            first = starts[number]
            items = [make_body(i) for i in range(first, min(total, first + batch_size))]
            batch, item_outcomes = await post_batch(http, urls[number % len(urls)], items)
            batches.append(batch)
            for outcome in item_outcomes:
                outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)

    await asyncio.gather(*(worker() for _ in range(min(max(1, concurrency), max(1, len(starts))))))
    return outcomes, batches


async def create_recipients(
    http: aiohttp.ClientSession, wallet_url: str, stamp_url: str, count: int, concurrency: int = 32
) -> list[str]:
    """``count`` wallet endpoints in the wallet simulator, each registered at Stamp as
    a recipient; the recipient ids in order."""
    limit = asyncio.Semaphore(concurrency)
    run = uuid.uuid4().hex[:8]

    async def one(index: int) -> str:
        async with limit:
            async with http.post(
                f"{wallet_url.rstrip('/')}/v1/_test/endpoints", json={"name": f"load-{run}-{index}"}
            ) as response:
                if response.status != 201:
                    raise RuntimeError(f"wallet simulator: {response.status} {await response.text()}")
                reference = await response.json()
            async with http.post(
                f"{stamp_url.rstrip('/')}/v1/recipients", json={"walletEndpointReference": reference}
            ) as response:
                if response.status != 201:
                    raise RuntimeError(
                        f"stamp: recipient not created: {response.status} {await response.text()}"
                    )
                recipient_id: str = (await response.json())["id"]
                return recipient_id

    return list(await asyncio.gather(*(one(i) for i in range(count))))
