"""Range-proof throughput on one core, and where the time goes.

    .venv/bin/python scripts/bench_rangeproof.py [--seconds 5]

Prints the cost of the libsodium primitives and of one Keccak-f[1600], how many libsodium
products and additions one proof and one verification make, proofs/s and verifications/s, and
a comparison of a multiscalar sum done as single products (what rangeproof.py does) with a
bucket (Pippenger) method built from libsodium additions, at the verifier's size.
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from stamp.crypto import merlin, rangeproof, sodium
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN, bulletproof_gens

LABEL = b"0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"


def per_call_us(fn: Callable[[], object], seconds: float) -> float:
    calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(20):
            fn()
        calls += 20
    return elapsed / calls * 1e6


@contextmanager
def counting_sodium_calls() -> Iterator[collections.Counter[str]]:
    counts: collections.Counter[str] = collections.Counter()
    originals = {name: getattr(sodium, name) for name in ("mul", "add", "sub", "is_valid_point")}

    def counted(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            counts[name] += 1
            return fn(*args)

        return wrapper

    for name, fn in originals.items():
        setattr(sodium, name, counted(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(sodium, name, fn)


def pippenger(scalars: list[int], points: list[bytes], window: int) -> bytes:
    """Bucket method using only libsodium additions (a doubling is an addition too)."""
    total = sodium.IDENTITY
    for shift in reversed(range(0, 253, window)):
        for _ in range(window if total != sodium.IDENTITY else 0):
            total = sodium.add(total, total)
        buckets: dict[int, bytes] = {}
        for scalar, point in zip(scalars, points, strict=True):
            digit = scalar >> shift & ((1 << window) - 1)
            if digit:
                buckets[digit] = sodium.add(buckets[digit], point) if digit in buckets else point
        running = sodium.IDENTITY
        window_sum = sodium.IDENTITY
        for digit in reversed(range(1, 1 << window)):
            if digit in buckets:
                running = sodium.add(running, buckets[digit])
            if running != sodium.IDENTITY:
                window_sum = sodium.add(window_sum, running)
        total = sodium.add(total, window_sum)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    seconds = parser.parse_args().seconds
    short = min(seconds, 1.0)

    point = bulletproof_gens(32)[0][0]
    scalar = rangeproof._random_scalars(1)[0]
    lanes = list(range(25))
    print(f"libsodium scalar product : {per_call_us(lambda: sodium.mul(scalar, point), short):7.1f} µs")
    print(f"libsodium addition       : {per_call_us(lambda: sodium.add(point, point), short):7.1f} µs")
    print(f"Keccak-f[1600] (Python)  : {per_call_us(lambda: merlin.keccak_f1600(lanes), short):7.1f} µs")

    proof, commitment = rangeproof.prove(4_000_000_000, scalar, LABEL, PROJECT_ORIGIN_PEDERSEN)
    with counting_sodium_calls() as counts:
        rangeproof.prove(4_000_000_000, scalar, LABEL, PROJECT_ORIGIN_PEDERSEN)
    print(f"libsodium calls per proof (value 4e9, 16 bits set): {dict(counts)}")
    with counting_sodium_calls() as counts:
        assert rangeproof.verify(proof, commitment, LABEL, PROJECT_ORIGIN_PEDERSEN)
    print(f"libsodium calls per verification: {dict(counts)}")

    prove_us = per_call_us(
        lambda: rangeproof.prove(4_000_000_000, scalar, LABEL, PROJECT_ORIGIN_PEDERSEN), seconds
    )
    verify_us = per_call_us(
        lambda: rangeproof.verify(proof, commitment, LABEL, PROJECT_ORIGIN_PEDERSEN), seconds
    )
    print(f"prove  (n=32): {prove_us / 1000:6.2f} ms  = {1e6 / prove_us:6.1f} proofs/s on one core")
    print(f"verify (n=32): {verify_us / 1000:6.2f} ms  = {1e6 / verify_us:6.1f} verifications/s on one core")

    size = 2 * 32 + 2 * 5 + 7  # the verifier's single combined check
    gens_g, gens_h = bulletproof_gens(64)
    points = list((gens_g + gens_h)[:size])
    scalars = rangeproof._random_scalars(size)
    single = functools.partial(rangeproof._sum_of_products, scalars, points)
    expected = single()
    print(f"multiscalar sum of {size} terms:")
    print(f"  single products + additions : {per_call_us(single, short) / 1000:6.2f} ms")
    for window in (4, 5, 6):
        assert pippenger(scalars, points, window) == expected
        bucket_us = per_call_us(functools.partial(pippenger, scalars, points, window), short)
        print(f"  Pippenger, window {window}        : {bucket_us / 1000:6.2f} ms")


if __name__ == "__main__":
    main()
