"""Common base of Stamp's actors."""

from __future__ import annotations

import pykka


class StampActor(pykka.ThreadingActor):
    # Everything an actor knows that matters is in PostgreSQL, so an actor thread
    # must never keep the process alive after the service has shut down.
    use_daemon_thread = True
