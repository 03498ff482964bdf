"""How ``stamp serve`` asks the cyclic garbage collector to run once it is up.

Every certificate allocates many short-lived objects (request, records, messages,
futures). With CPython's default thresholds (700, 10, 10) the collector runs a young
collection every 700 net allocations and, now and then, a full one that walks every
object the process holds: among them the ~75,000 that start-up leaves behind (modules
of aiohttp, grpc, asyncpg and the rest), which never become garbage. Measured during
``stamp loadtest -n 900 -r 1000 --rate 30`` (``gc.callbacks`` timing each collection in
the Stamp process): 159 ms in the collector for 900 certificates with the defaults,
99 ms with the policy below, most of that during start-up and in the one full
collection before the freeze.

So, once started: freeze what start-up built (moved to a generation the collector
never walks; it stays alive anyway), and let the young generation grow to
``YOUNG_THRESHOLD`` before it is examined, so that most per-certificate objects are
freed by reference counting before the collector ever looks at them. The older
generations keep CPython's ratios: reference cycles that outlive a young collection
(an actor and its reference, say) are still found within a few seconds.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Net allocations between young collections (CPython: 700). A young collection
walks only the young objects, so a bigger one costs more each time but runs rarely
and finds most of its candidates already freed."""


def settle_after_startup() -> None:
    """Freeze everything alive now and raise the young threshold (call once the
    service has started: imports done, pools, actors and listener up)."""
    gc.collect()  # start-up's own garbage goes first, so that it is not frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
