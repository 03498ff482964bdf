"""The load test's report: figures from the driver, /metrics, the wallet simulator and
the database, the invariant check, and a text rendering."""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Any

REPORT_FIELDS = (
    "run.certificates",
    "run.recipients",
    "run.schedule",
    "run.instances",
    "run.commit_delay_seconds",
    "run.proof_sample",
    "machine.cpus",
    "machine.load_average_start",
    "intake.sent",
    "intake.accepted",
    "intake.refused",
    "intake.seconds",
    "intake.accepted_per_second",
    "intake.latency_seconds.p50",
    "intake.latency_seconds.p95",
    "intake.latency_seconds.p99",
    "intake.latency_seconds.max",
    "pipeline.delivered",
    "pipeline.rejected",
    "pipeline.failed",
    "pipeline.seconds",
    "pipeline.delivered_per_second",
    "pipeline.end_to_end_seconds.p50",
    "pipeline.end_to_end_seconds.p95",
    "pipeline.end_to_end_seconds.p99",
    "pipeline.end_to_end_seconds.max",
    "resources.peak_rss_bytes",
    "resources.peak_threads",
    "resources.peak_live_actors",
    "resources.event_loop_lag_p99_seconds",
    "resources.db_commits_per_certificate",
    "resources.cpu_seconds",
    "invariants.no_duplicate_positions",
    "invariants.gapless_positions",
    "invariants.all_verified_by_wallet",
    "invariants.nothing_lost",
    "invariants.ok",
)
"""Every report has these (dotted paths); a figure that could not be measured is null."""


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        # Nearest rank: a value that was actually observed.
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as meminfo:
            memory = int(meminfo.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        memory = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_bytes": memory,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "load_average_start": list(os.getloadavg()),
    }


def missing_fields(report: Mapping[str, Any]) -> list[str]:
    missing = []
    for path in REPORT_FIELDS:
        node: Any = report
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                missing.append(path)
                break
            node = node[part]
    return missing


def _batch_lines(intake: Mapping[str, Any]) -> list[str]:
    batches = intake.get("batches")
    if not batches:
        return []
    lat = batches["latency_seconds"]
    return [
        f"  batches     {batches['sent']} of {batches['size']} certificates; "
        f"latency p50 {_ms(lat['p50'])} ms  p99 {_ms(lat['p99'])} ms  max {_ms(lat['max'])} ms"
    ]


def _ms(value: float | None) -> str:
    return "   n/a" if value is None else f"{value * 1000:6.0f}"


def _s(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"


def _mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.0f} MB"


def render(report: Mapping[str, Any]) -> str:
    run, intake, pipeline = report["run"], report["intake"], report["pipeline"]
    resources, invariants = report["resources"], report["invariants"]
    lat, e2e = intake["latency_seconds"], pipeline["end_to_end_seconds"]
    commits = resources["db_commits_per_certificate"]
    lag = resources["event_loop_lag_p99_seconds"]
    if run["commit_delay_seconds"] is None:
        registry = "registry as it runs"
    else:
        registry = (
            f"registry commit delay {run['commit_delay_seconds']:g} s, "
            f"range proofs verified 1 in {run['proof_sample']}"
        )
    lines = [
        "",
        f"stamp load test: {run['schedule']}; {run['recipients']} recipients; "
        f"{run['instances']} Stamp process(es); {registry}",
        "",
        f"  intake      {intake['accepted']} accepted of {intake['sent']} sent "
        f"({intake['refused']} refused) in {intake['seconds']:.1f} s = {intake['accepted_per_second']:.1f}/s",
        f"  202 latency p50 {_ms(lat['p50'])} ms  p95 {_ms(lat['p95'])} ms  p99 {_ms(lat['p99'])} ms  "
        f"max {_ms(lat['max'])} ms  (in Stamp's handlers: p99 "
        f"{_ms(intake.get('server_latency_p99_seconds'))} ms)",
        *_batch_lines(intake),
        f"  pipeline    {pipeline['delivered']} delivered, {pipeline['rejected']} rejected, "
        f"{pipeline['failed']} failed in {pipeline['seconds']:.1f} s = "
        f"{pipeline['delivered_per_second']:.1f} delivered/s",
        f"  accepted→delivered  p50 {_s(e2e['p50'])} s  p95 {_s(e2e['p95'])} s  p99 {_s(e2e['p99'])} s  "
        f"max {_s(e2e['max'])} s",
        f"  resources   peak RSS {_mb(resources['peak_rss_bytes'])} (crypto workers "
        f"{_mb(resources.get('peak_crypto_workers_rss_bytes'))}), peak threads {resources['peak_threads']}, "
        f"peak live actors {resources['peak_live_actors']}",
        f"              event-loop lag p99 {_ms(lag).strip()} ms, DB commits per certificate "
        f"{'n/a' if commits is None else f'{commits:.2f}'}",
        "  cpu seconds " + ", ".join(f"{k} {v:.1f}" for k, v in resources["cpu_seconds"].items()),
        "",
        "  invariants  "
        + ", ".join(
            f"{name.replace('_', ' ')}: {'yes' if invariants[name] else 'NO'}"
            for name in (
                "no_duplicate_positions",
                "gapless_positions",
                "all_verified_by_wallet",
                "nothing_lost",
            )
        ),
        f"  result      {'OK' if invariants['ok'] else 'FAILED: ' + '; '.join(invariants['problems'])}",
    ]
    if report.get("registry"):
        lines.append(f"  registry    {report['registry'].get('report', '')}")
    return "\n".join(lines)
