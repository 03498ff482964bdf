"""Throughput of Stamp's crypto core, on one core and on all cores.

    .venv/bin/python scripts/bench_crypto.py            # about 35 s on 2 cores
    .venv/bin/python scripts/bench_crypto.py --quick    # about 10 s
    .venv/bin/python scripts/bench_crypto.py --iterations 1000

Prints range proofs/s, verifications/s and full issue bundles/s (owner key, commitment,
proof, own verification, hashed attributes, signed transaction) in this process and in a
ProcessPoolExecutor sized to os.cpu_count(), plus where a bundle's time goes. The pool runs one
bundle per task, as the service does, so its figure includes pickling and task overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor

from stamp.crypto import rangeproof
from stamp.crypto.bundle import IssueRequest, build_issue_bundle
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.crypto.issuer_keys import IssuerKey
from stamp.crypto.pedersen import random_blinding

LABEL = b"0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"
QUANTITY = 123_456
PHASES = ("derive", "commit", "prove", "verify", "sign")


def _request(recipient: bytes, issuer_pem: str, position: int) -> IssueRequest:
    return IssueRequest(
        registry="Narnia",
        certificate_id=str(uuid.uuid4()),
        certificate_type=2,
        quantity=QUANTITY,
        start=1_700_000_000,
        end=1_700_003_600,
        grid_area="DK1",
        clear_attributes=(("fuelCode", "F01040100"), ("techCode", "T010000")),
        hashed_attributes=(("assetId", "571234567890123456"),),
        recipient_public_key=recipient,
        position=position,
        issuer_private_pem=issuer_pem,
    )


# Worker-side tasks: module-level so the pool can pickle them.


def _prove(_: int) -> tuple[bytes, bytes]:
    return rangeproof.prove(QUANTITY, random_blinding(), LABEL, PROJECT_ORIGIN_PEDERSEN)


def _verify(item: tuple[bytes, bytes]) -> bool:
    return rangeproof.verify(item[0], item[1], LABEL, PROJECT_ORIGIN_PEDERSEN)


def _bundle(request: IssueRequest) -> dict[str, float]:
    timings: dict[str, float] = {}
    build_issue_bundle(request, timings)
    return timings


def _warm(_: int) -> None:
    _verify(_prove(0))


def _rate(count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def _consume(results: Iterable[object]) -> list[object]:
    return list(results)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer iterations (about 10 s)")
    parser.add_argument("--iterations", type=int, help="proofs and bundles per run (verifications: twice)")
    args = parser.parse_args()
    n = args.iterations or (150 if args.quick else 500)
    cores = os.cpu_count() or 1

    recipient = ExtendedPrivateKey.generate().child(1).public().to_bytes()
    issuer_pem = IssuerKey.generate().private_pem()
    requests = [_request(recipient, issuer_pem, i) for i in range(n)]

    _warm(0)  # generators and caches, outside the timed runs
    proofs = [_prove(0) for _ in range(max(1, n // 4))]
    verify_items = (proofs * (2 * n // len(proofs) + 1))[: 2 * n]

    print(f"crypto core, {n} proofs / {2 * n} verifications / {n} bundles per run, {cores} cores")
    print(f"{'':14}{'1 core':>12}{f'{cores} cores':>12}")

    single: dict[str, float] = {}
    single["proofs/s"] = _rate(n, lambda: _consume(map(_prove, range(n))))
    single["verifications/s"] = _rate(2 * n, lambda: _consume(map(_verify, verify_items)))
    split: list[dict[str, float]] = []
    single["bundles/s"] = _rate(n, lambda: split.extend(map(_bundle, requests)))

    pooled: dict[str, float] = {}
    with ProcessPoolExecutor(max_workers=cores) as pool:
        _consume(pool.map(_warm, range(cores)))
        chunk = max(1, n // (cores * 8))
        pooled["proofs/s"] = _rate(n, lambda: _consume(pool.map(_prove, range(n), chunksize=chunk)))
        pooled["verifications/s"] = _rate(
            2 * n, lambda: _consume(pool.map(_verify, verify_items, chunksize=chunk))
        )
        fresh = [_request(recipient, issuer_pem, n + i) for i in range(n)]
        # One bundle per task, as the service submits them; the rate counts until the last one is done.
        pooled["bundles/s"] = _rate(
            n, lambda: _consume(f.result() for f in [pool.submit(_bundle, r) for r in fresh])
        )

    for name in ("proofs/s", "verifications/s", "bundles/s"):
        print(f"{name:<18}{single[name]:>8.1f}{pooled[name]:>12.1f}")

    total = statistics.fmean(sum(t.values()) for t in split)
    print(f"\none bundle on one core: {total * 1e3:.2f} ms")
    for phase in PHASES:
        mean = statistics.fmean(t.get(phase, 0.0) for t in split)
        print(f"  {phase:<8}{mean * 1e3:>8.3f} ms  {mean / total:>6.1%}")
    print("  (sign = hash attributes + build IssuedEvent + Ed25519 signature + serialization)")


if __name__ == "__main__":
    main()
