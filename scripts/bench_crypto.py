"""Stamp's crypto core on both group backends in one run: libdecaf (native) and libsodium.

    .venv/bin/python scripts/bench_crypto.py            # about 3 minutes on 2 cores
    .venv/bin/python scripts/bench_crypto.py --quick    # about a minute
    .venv/bin/python scripts/bench_crypto.py --rounds 9 --bundles 200

Prints, per backend and as the ratio decaf ÷ sodium: single group operations (decode, add,
scalar multiplication, MSM of 64 and 128 points), prove and verify (32 bits), and full issue
bundles/s (owner key, commitment, proof, own verification, hashed attributes, signed
transaction) on one core and in a process pool on every core, plus where a bundle's time
goes. The machine may be shared, so the two backends are measured in alternating rounds
and the figures are medians over rounds: compare the ratios, which share the noise.
The targets of the native backend (prove ≤ 0.40×, verify ≤ 0.35×, bundles/s ≥ 2.5× the
sodium backend's) are checked at the end.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

from stamp.crypto import backend, rangeproof
from stamp.crypto.backend import Group
from stamp.crypto.bundle import IssueRequest, build_issue_bundle
from stamp.crypto.generators import PROJECT_ORIGIN_PEDERSEN, bulletproof_gens
from stamp.crypto.hdkeys import ExtendedPrivateKey
from stamp.crypto.issuer_keys import IssuerKey
from stamp.crypto.pedersen import random_blinding
from stamp.crypto.sodium import L
from stamp.domain import CertificateContent, CertificateKey

LABEL = b"0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69"
QUANTITY = 123_456
PHASES = ("derive", "commit", "prove", "verify", "sign")
TARGETS = {"prove": ("≤", 0.40), "verify": ("≤", 0.35), "bundles/s, all cores": ("≥", 2.5)}


def _request(recipient: bytes, issuer_pem: str, position: int) -> IssueRequest:
    return IssueRequest(
        content=CertificateContent(
            key=CertificateKey("Narnia", str(uuid.uuid4())),
            recipient_id="0b5c3d6e-8a4f-4f7e-9a51-2f1d3c4b5a69",
            metering_point_id="571234567890123456",
            certificate_type=2,
            quantity=QUANTITY,
            start=1_700_000_000,
            end=1_700_003_600,
            grid_area="DK1",
            clear_attributes=(("fuelCode", "F01040100"), ("techCode", "T010000")),
            hashed_attributes=(("assetId", "571234567890123456"),),
        ),
        recipient_public_key=recipient,
        position=position,
        issuer_private_pem=issuer_pem,
    )


# Worker-side: module level so the pool can pickle them.


def _init_worker(name: str) -> None:
    backend.configure(name)


def _bundle(request: IssueRequest) -> str:
    build_issue_bundle(request)
    return backend.active().name


def _warm(_: int) -> str:
    _verify(*_prove())
    return backend.active().name


def _prove() -> tuple[bytes, bytes]:
    return rangeproof.prove(QUANTITY, random_blinding(), LABEL, PROJECT_ORIGIN_PEDERSEN)


def _verify(proof: bytes, commitment: bytes) -> bool:
    return rangeproof.verify(proof, commitment, LABEL, PROJECT_ORIGIN_PEDERSEN)


# --- measuring ------------------------------------------------------------------------------


def _per_call(run: Callable[[], object], count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        run()
    return (time.perf_counter() - started) / count


class Rounds:
    """Seconds per call, per (measure, backend), collected in alternating rounds."""

    def __init__(self) -> None:
        self.samples: dict[tuple[str, str], list[float]] = {}

    def add(self, measure: str, name: str, seconds: float) -> None:
        self.samples.setdefault((measure, name), []).append(seconds)

    def median(self, measure: str, name: str) -> float:
        return statistics.median(self.samples[(measure, name)])


def _operations(group: Group) -> dict[str, Callable[[], object]]:
    gens_g, gens_h = bulletproof_gens(64)
    encoding = gens_g[0]
    point = group.decode(encoding)
    pair = group.decode(gens_g[0] + gens_g[1])
    g64 = group.decode(b"".join(gens_g))
    g128 = [g64, group.decode(b"".join(gens_h))]
    ones = group.decode(b"".join(gens_h))
    bits64 = [i & 1 for i in range(64)]
    scalar = 0x0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDE % L
    s64 = [(scalar * (i + 7)) % L for i in range(64)]
    s128 = s64 + s64[::-1]
    return {
        "decode 1 point": lambda: group.decode(encoding),
        "encode 1 point": lambda: group.encode(point),
        "add (P + Q, encoded)": lambda: group.encode(group.msm([1, 1], [pair], secret=False)),
        "64 additions (select_sum)": lambda: group.select_sum(bits64, g64, ones),
        "scalar mult, constant time": lambda: group.msm([scalar], [point], secret=True),
        "scalar mult, variable time": lambda: group.msm([scalar], [point], secret=False),
        "MSM 64, variable time": lambda: group.msm(s64, [g64], secret=False),
        "MSM 128, variable time": lambda: group.msm(s128, g128, secret=False),
        "MSM 64, constant time": lambda: group.msm(s64, [g64], secret=True),
        "MSM 128, constant time": lambda: group.msm(s128, g128, secret=True),
    }


def _use(group: Group) -> None:
    backend.use(backend.Selection(group.name, group))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and bundles (about a minute)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per measure (default 7, quick 3)")
    parser.add_argument("--bundles", type=int, help="bundles per round on all cores (default 120, quick 60)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    pool_bundles = args.bundles or (60 if args.quick else 120)
    cores = os.cpu_count() or 1

    groups = backend.available()
    if len(groups) < 2:
        sys.exit(f"bench_crypto: needs both backends; {backend.select('auto').fallback_reason}")
    names = [g.name for g in groups]
    recipient = ExtendedPrivateKey.generate().child(1).public().to_bytes()
    issuer_pem = IssuerKey.generate().private_pem()
    position = iter(range(1, 10**9))
    results = Rounds()
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in names}

    ops = {g.name: _operations(g) for g in groups}
    proofs: dict[str, tuple[bytes, bytes]] = {}
    for group in groups:  # generators, tables and caches, outside the timed runs
        _use(group)
        for op in ops[group.name].values():
            op()
        proofs[group.name] = _prove()

    print(f"crypto core on both backends, {rounds} alternating rounds, {cores} cores", flush=True)
    for r in range(rounds):
        order = groups if r % 2 == 0 else groups[::-1]
        for group in order:
            _use(group)
            for measure, op in ops[group.name].items():
                results.add(
                    measure, group.name, _per_call(op, 30 if "MSM" in measure or "mult" in measure else 200)
                )
            results.add("prove", group.name, _per_call(_prove, 10))
            results.add("verify", group.name, _per_call(functools.partial(_verify, *proofs[group.name]), 20))

            def one_bundle(name: str = group.name) -> None:
                phases: dict[str, float] = {}
                build_issue_bundle(_request(recipient, issuer_pem, next(position)), phases)
                timings[name].append(phases)

            results.add("bundle, one core", group.name, _per_call(one_bundle, 10))
        print(f"  round {r + 1}/{rounds} done", flush=True)

    # All cores: one pool per backend, rounds alternating between the pools.
    pools = {name: ProcessPoolExecutor(cores, initializer=_init_worker, initargs=(name,)) for name in names}
    try:
        for name, pool in pools.items():
            assert set(pool.map(_warm, range(cores * 2))) == {name}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                requests = [_request(recipient, issuer_pem, next(position)) for _ in range(pool_bundles)]
                started = time.perf_counter()
                used = {f.result() for f in [pools[name].submit(_bundle, req) for req in requests]}
                assert used == {name}, used
                results.add("bundle, all cores", name, (time.perf_counter() - started) / pool_bundles)
    finally:
        for pool in pools.values():
            pool.shutdown()

    _report(results, names, timings, cores)


def _report(
    results: Rounds, names: list[str], timings: dict[str, list[dict[str, float]]], cores: int
) -> None:
    sodium_name, decaf_name = "sodium", "decaf"
    print(f"\n{'per call (median of rounds)':<30}{sodium_name:>12}{decaf_name:>12}{'decaf ÷ sodium':>16}")
    measures = list(dict.fromkeys(m for m, _ in results.samples))
    for measure in measures:
        s, d = results.median(measure, sodium_name), results.median(measure, decaf_name)
        print(f"{measure:<30}{_fmt(s):>12}{_fmt(d):>12}{d / s:>15.3f}×")

    print(f"\n{'throughput':<30}{sodium_name:>12}{decaf_name:>12}{'decaf ÷ sodium':>16}")
    rates = {}
    for measure, label in (
        ("bundle, one core", "bundles/s, one core"),
        ("bundle, all cores", "bundles/s, all cores"),
    ):
        s, d = 1 / results.median(measure, sodium_name), 1 / results.median(measure, decaf_name)
        rates[label] = d / s
        print(f"{label:<30}{s:>12.1f}{d:>12.1f}{d / s:>15.2f}×")
    print(f"  (all cores = {cores} worker processes, one bundle per task as the service submits them)")

    for name in names:
        split = timings[name]
        total = statistics.fmean(sum(t.values()) for t in split)
        parts = ", ".join(
            f"{phase} {statistics.fmean(t.get(phase, 0.0) for t in split) * 1e3:.2f}" for phase in PHASES
        )
        print(f"one bundle on {name}: {total * 1e3:.2f} ms = {parts} ms")

    print("\ntargets (decaf ÷ sodium, same run):")
    ratios = {
        "prove": results.median("prove", decaf_name) / results.median("prove", sodium_name),
        "verify": results.median("verify", decaf_name) / results.median("verify", sodium_name),
        "bundles/s, all cores": rates["bundles/s, all cores"],
    }
    for measure, (sense, bound) in TARGETS.items():
        value = ratios[measure]
        met = value <= bound if sense == "≤" else value >= bound
        print(f"  {measure:<22} {value:6.3f}×  target {sense} {bound}×  {'met' if met else 'NOT MET'}")


def _fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


if __name__ == "__main__":
    main()
