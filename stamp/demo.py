"""``stamp demo``: the whole stack on one machine, no set-up.

Embedded PostgreSQL, the registry and wallet simulators and Stamp run in this
process; the demo creates recipients in the wallet simulator and in Stamp, posts
certificates over HTTP as an issuing body would, shows their progress and prints a
summary, including what the wallet simulator verified.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from stamp.api.connections import make_runner
from stamp.app import POOL, build_app
from stamp.config import Settings
from stamp.crypto.issuer_keys import IssuerKey
from stamp.db import queries
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from stamp.domain import TERMINAL_STATES
from stamp.progress import ProgressBar

REGISTRY = "Narnia"
GRID_AREA = "DK1"
PERIOD_START = 1_735_689_600  # 2025-01-01T00:00:00Z


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _log_to(path: Path) -> Any:
    handle = path.open("a")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(
                serializer=lambda o, **_: orjson.dumps(o, default=str).decode()
            ),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=handle),
        cache_logger_on_first_use=False,
    )
    return handle


def certificate_body(recipient_id: str, index: int, run: str) -> dict[str, Any]:
    start = PERIOD_START + 3600 * index
    return {
        "recipientId": recipient_id,
        "registryName": REGISTRY,
        "meteringPointId": f"5712345678{run}",
        "certificate": {
            "id": str(uuid.uuid4()),
            "type": "production" if index % 4 else "consumption",
            "quantity": 1000 + (index * 37) % 5000,
            "start": start,
            "end": start + 3600,
            "gridArea": GRID_AREA,
            "clearTextAttributes": {"fuelCode": "F01040100", "techCode": "T010000"},
            "hashedAttributes": [{"key": "assetId", "value": f"57123456789{index:07d}"}],
        },
    }


async def run_demo(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="stamp-demo-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        log_handle = _log_to(data_dir / "stamp-demo.log")
        try:
            summary = await _run(args, data_dir)
        finally:
            log_handle.close()
    if args.json:
        print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_summary(summary)
    return 0 if summary["lost"] == 0 and summary["failed"] == 0 else 1


async def _run(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    total, recipients = max(1, args.certificates), max(1, args.recipients)
    issuer = IssuerKey.generate()
    print(
        f"stamp demo: {total} certificates for {recipients} recipient(s); "
        f"logs in {data_dir / 'stamp-demo.log'}"
    )
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,),
            issuer_keys={GRID_AREA: (issuer.public_pem(),)},
            commit_delay=args.commit_delay,
        )
    )
    await registry.start()
    wallet = WalletSimulator(WalletSimConfig(registries={REGISTRY: registry.address}))
    await wallet.start()
    settings = Settings(
        database_url=None,
        data_dir=data_dir,
        port=_free_port(),
        registries={REGISTRY: registry.address},
        issuer_keys={GRID_AREA: issuer},
        instance_id="demo",
    )
    app = build_app(settings)
    runner = make_runner(app, settings)
    print("starting embedded PostgreSQL, simulators and Stamp …")
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port)
    await site.start()
    base = f"http://127.0.0.1:{settings.port}"
    try:
        return await _issue(app, base, total, recipients, registry, wallet)
    finally:
        await runner.cleanup()
        await wallet.stop()
        await registry.stop()


async def _issue(
    app: web.Application,
    base: str,
    total: int,
    recipients: int,
    registry: RegistrySimulator,
    wallet: WalletSimulator,
) -> dict[str, Any]:
    run = f"{uuid.uuid4().int % 10**8:08d}"
    async with aiohttp.ClientSession() as http:
        recipient_ids = []
        for _ in range(recipients):
            reference = wallet.create_endpoint()
            async with http.post(
                f"{base}/v1/recipients", json={"walletEndpointReference": reference.as_json()}
            ) as r:
                r.raise_for_status()
                recipient_ids.append((await r.json())["id"])
        started = time.monotonic()
        bar = ProgressBar(total)
        limit = asyncio.Semaphore(64)

        async def post(index: int) -> int:
            body = certificate_body(recipient_ids[index % recipients], index, run)
            async with limit, http.post(f"{base}/v1/certificates", json=body) as response:
                await response.read()
                return response.status

        posting = asyncio.gather(*(post(i) for i in range(total)))
        pool = app[POOL]
        while True:
            counts = await queries.count_by_state(pool)
            finished = sum(counts.get(s.value, 0) for s in TERMINAL_STATES)
            bar.update(
                finished,
                {
                    "accepted": sum(counts.values()),
                    **{k: counts.get(k, 0) for k in ("delivered", "rejected", "failed")},
                },
            )
            if posting.done() and finished >= sum(counts.values()):
                break
            await asyncio.sleep(0.25)
        statuses = await posting
        elapsed = time.monotonic() - started
        bar.close()
        positions = await pool.fetch(
            "SELECT recipient_id::text, min(position) AS lo, max(position) AS hi, count(position) AS n, "
            "count(DISTINCT position) AS distinct_n FROM certificates GROUP BY recipient_id"
        )
    await asyncio.sleep(0.5)  # let the wallet simulator finish its last verifications
    accepted = sum(1 for s in statuses if s == 202)
    slices = wallet.report()
    return {
        "certificates": total,
        "accepted": accepted,
        "delivered": counts.get("delivered", 0),
        "rejected": counts.get("rejected", 0),
        "failed": counts.get("failed", 0),
        "lost": accepted - finished,
        "seconds": round(elapsed, 2),
        "delivered_per_second": round(counts.get("delivered", 0) / elapsed, 1) if elapsed else 0,
        "positions": [
            {
                "recipient": p["recipient_id"],
                "first": p["lo"],
                "last": p["hi"],
                "count": p["n"],
                "distinct": p["distinct_n"],
            }
            for p in positions
        ],
        "wallet": slices,
        "registry": registry.report(),
    }


def _print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"  delivered   {summary['delivered']:>7}")
    print(f"  rejected    {summary['rejected']:>7}")
    print(f"  failed      {summary['failed']:>7}")
    print(f"  lost        {summary['lost']:>7}")
    print(
        f"  time        {summary['seconds']:>7.1f} s   "
        f"({summary['delivered_per_second']} delivered/s end to end)"
    )
    for p in summary["positions"][:5]:
        gaps = (
            "no gaps, no duplicates" if p["distinct"] == p["count"] == p["last"] - p["first"] + 1 else "CHECK"
        )
        print(f"  positions   {p['first']}..{p['last']} for recipient {p['recipient']} ({gaps})")
    if len(summary["positions"]) > 5:
        print(f"  …and {len(summary['positions']) - 5} more recipients")
    print(f"  wallet      {summary['wallet']}")
    print(f"  registry    {summary['registry']}")
