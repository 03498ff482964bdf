"""Reading Stamp's ``/metrics``: samples, sums over label sets, differences between
two scrapes and quantiles of histograms (as Prometheus' ``histogram_quantile`` does:
linear inside the bucket)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class Scrape:
    samples: Mapping[tuple[str, Labels], float]

    @staticmethod
    def parse(text: str, only: frozenset[str] | None = None) -> Scrape:
        """Every sample; with ``only``, just the samples of these names (a cheap line
        filter first: the full parse of a loaded Stamp's histograms costs milliseconds)."""
        if only is not None:
            text = "\n".join(
                line
                for line in text.splitlines()
                if line and line[0] != "#" and line.partition("{")[0].partition(" ")[0] in only
            )
        return Scrape(
            {
                (s.name, frozenset(s.labels.items())): float(s.value)
                for family in text_string_to_metric_families(text)
                for s in family.samples
            }
        )

    def total(self, name: str, **labels: str) -> float:
        """Sum of ``name`` over every label set that contains ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name:
                key = dict(ls).get(label, "")
                out[key] = out.get(key, 0.0) + v
        return out

    def buckets(self, name: str, **labels: str) -> dict[float, float]:
        """Cumulative bucket counts of histogram ``name`` with these label values
        (summed over the other labels)."""
        out: dict[float, float] = {}
        for (n, ls), v in self.samples.items():
            if n == name + "_bucket":
                values = dict(ls)
                if any(values.get(k) != want for k, want in labels.items()):
                    continue
                bound = float(values["le"])
                out[bound] = out.get(bound, 0.0) + v
        return out


def merge(scrapes: Iterable[Scrape]) -> Scrape:
    """Several Stamp processes as one: every sample summed."""
    merged: dict[tuple[str, Labels], float] = {}
    for scrape in scrapes:
        for key, value in scrape.samples.items():
            merged[key] = merged.get(key, 0.0) + value
    return Scrape(merged)


def bucket_delta(before: Scrape, after: Scrape, name: str, **labels: str) -> dict[float, float]:
    old = before.buckets(name, **labels)
    return {bound: count - old.get(bound, 0.0) for bound, count in after.buckets(name, **labels).items()}


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative ``buckets`` (upper bound → count), interpolated
    linearly inside its bucket; None without observations."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: its bound is all we know
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return ordered[-1][0]


async def scrape(http: aiohttp.ClientSession, base: str, only: frozenset[str] | None = None) -> Scrape:
    async with http.get(f"{base}/metrics") as response:
        response.raise_for_status()
        return Scrape.parse(await response.text(), only)
