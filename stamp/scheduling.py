"""A shorter CPU time slice for a process, so that what wakes up gets the core sooner.

Why Stamp wants it: the crypto workers keep both cores busy during a burst, at
``nice +10``. Niceness sets their *share* of the CPU, not how fast they give a core up:
Linux's scheduler (EEVDF, since 6.6) lets the running task finish its time slice —
1.4 ms on these two-core machines — before a task that just woke up may preempt it.
Accepting a certificate is a chain of such wake-ups (the event loop, a PostgreSQL
backend, its WAL flush, the loop again), and in a burst at 1,000 arrivals/s each link
could queue behind a worker's slice. With one worker fewer the burst's 202 p99 fell by
a third; asking the workers for a 0.1 ms slice instead keeps both workers and their
throughput (docs/benchmarks.md, "The session of 2026-12-07 (fourth)").

Since Linux 6.12 a task in the normal class may ask for its own slice:
``sched_attr.sched_runtime``, clamped by the kernel to 0.1–100 ms. Python's ``os``
module has no ``sched_setattr``, so the call goes through libc's ``syscall(2)`` with
ctypes; the policy is kept (``SCHED_FLAG_KEEP_POLICY``) and the nice value passed is
the current one. Elsewhere — another OS, an architecture whose call numbers are not
listed here, a kernel that ignores the field — nothing changes and ``request_slice``
says so; the process still runs, only without the hint.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
import sys

MIN_SLICE_SECONDS = 0.0001
MAX_SLICE_SECONDS = 0.1
"""The range the kernel accepts for a custom slice (it clamps to it)."""

# (sched_setattr, sched_getattr) by machine: x86_64's own table, and the generic one
# that arm64, riscv64 and loongarch64 share.
_SYSCALLS = {
    "x86_64": (314, 315),
    "aarch64": (274, 275),
    "arm64": (274, 275),
    "riscv64": (274, 275),
    "loongarch64": (274, 275),
}
# struct sched_attr as first published (SCHED_ATTR_SIZE_VER0): size, policy, flags,
# nice, priority, runtime, deadline, period.
_ATTR = struct.Struct("=IIQiIQQQ")
_SCHED_FLAG_KEEP_POLICY = 0x08


@functools.cache  # the answer cannot change within a process: look it up once
def _calls() -> tuple[ctypes.CDLL, int, int] | None:
    if not sys.platform.startswith("linux"):
        return None
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    return libc, numbers[0], numbers[1]


def current_slice(pid: int = 0) -> float | None:
    """The slice the kernel reports for ``pid`` (0: the calling thread), in seconds; ``None``
    where it cannot be read (or the kernel reports none: before 6.12 it does not)."""
    calls = _calls()
    if calls is None:
        return None
    libc, _, getattr_nr = calls
    buffer = ctypes.create_string_buffer(_ATTR.size)
    if libc.syscall(ctypes.c_long(getattr_nr), ctypes.c_long(pid), buffer, ctypes.c_uint(_ATTR.size), 0) != 0:
        return None
    runtime = _ATTR.unpack(buffer.raw)[5]
    return runtime / 1e9 if runtime else None


def request_slice(seconds: float) -> bool:
    """Ask for a ``seconds`` slice (clamped to the kernel's range) for the calling
    thread — and the threads it starts afterwards, which inherit it — its policy and
    nice value unchanged. True when the kernel reports that slice back."""
    calls = _calls()
    if calls is None:
        return False
    libc, setattr_nr, _ = calls
    nanoseconds = round(min(max(seconds, MIN_SLICE_SECONDS), MAX_SLICE_SECONDS) * 1e9)
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    buffer = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, 0, _SCHED_FLAG_KEEP_POLICY, nice, 0, nanoseconds, 0, 0), _ATTR.size
    )
    if libc.syscall(ctypes.c_long(setattr_nr), ctypes.c_long(0), buffer, ctypes.c_uint(0)) != 0:
        return False
    return current_slice() == nanoseconds / 1e9
