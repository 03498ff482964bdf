"""The registry and wallet simulators in a process of their own, for the load test.

Separate from Stamp so that the CPU the simulators burn (the registry verifies range
proofs, the wallet verifies every slice) is not counted as Stamp's, and does not run
on Stamp's event loop. Line protocol on stdin/stdout:

- on start it prints one JSON line: ``{"registry": "host:port", "wallet": "http://…"}``;
- ``report`` on stdin → one JSON line with the registry's statistics and report;
- end of stdin (the parent went away) or SIGTERM → both simulators stop, exit 0.

    python -m stamp.load.simulators --issuer-public-pem-b64 … [--commit-delay 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import Sequence

import orjson
import structlog

from stamp import event_loop
from stamp.devstack.registry import RegistrySimConfig, RegistrySimulator
from stamp.devstack.wallet import WalletSimConfig, WalletSimulator
from stamp.load.driver import GRID_AREA, REGISTRY


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stamp.load.simulators", description=__doc__)
    parser.add_argument("--issuer-public-pem-b64", required=True, help="the grid area's issuer public key")
    parser.add_argument("--commit-delay", type=float, default=0.2)
    parser.add_argument("--proof-sample", type=int, default=1, help="verify one range proof in N")
    parser.add_argument("--verify-workers", type=int, default=2, help="registry verification threads")
    parser.add_argument(
        "--wallet-reads",
        choices=("in-process", "grpc"),
        default="in-process",
        help="how the wallet reads the registry to verify a slice: from the registry simulator in "
        "this process (same answer, counts and faults as the RPC, without its CPU; default) or "
        "over gRPC as a wallet in another process would",
    )
    return parser


async def run(args: argparse.Namespace) -> int:
    registry = RegistrySimulator(
        RegistrySimConfig(
            registries=(REGISTRY,),
            issuer_keys={GRID_AREA: (args.issuer_public_pem_b64,)},
            commit_delay=args.commit_delay,
            proof_sample=args.proof_sample,
            workers=args.verify_workers,
        )
    )
    await registry.start()
    wallet = WalletSimulator(
        WalletSimConfig(registries={REGISTRY: registry.address}),
        registry=registry if args.wallet_reads == "in-process" else None,
    )
    await wallet.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    _say({"registry": registry.address, "wallet": wallet.base_url})

    async def commands() -> None:
        while line := await reader.readline():
            if line.strip() == b"report":
                _say(
                    {
                        "stats": dataclasses.asdict(registry.stats()),
                        "report": registry.report(),
                        "proofSample": args.proof_sample,
                        "commitDelay": args.commit_delay,
                        "walletReads": args.wallet_reads,
                        "eventLoop": event_loop.running_loop_name(),
                    }
                )
        stop.set()

    listener = asyncio.create_task(commands())
    try:
        await stop.wait()
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        await wallet.stop()
        await registry.stop()
    return 0


def _say(message: object) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Warnings only, and to stderr: stdout carries the protocol.
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # uvloop as in Stamp: the simulators share the machine with what they measure, so
    # their loop's own cost per call is CPU taken from Stamp and its crypto workers.
    return event_loop.run(run(args), "auto")


if __name__ == "__main__":
    raise SystemExit(main())
