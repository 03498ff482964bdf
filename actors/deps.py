"""What every actor needs from the process: the loop bridge, the database pool, the
gateways and the settings. Built once at start-up and handed down."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pykka

from actors.bridge import LoopBridge
from stamp.admission import LiveCounts, RecipientCache
from stamp.config import Settings
from stamp.db.batcher import StatementBatcher
from stamp.db.queries import Lease


@dataclass(frozen=True, slots=True)
class ActorDeps:
    settings: Settings
    bridge: LoopBridge
    pool: asyncpg.Pool
    # The hot statements (transitions, allocations) go through the group commit.
    batcher: StatementBatcher
    recipients: RecipientCache
    registry_gateway: pykka.ActorRef[Any]
    wallet_gateway: pykka.ActorRef[Any]
    live: LiveCounts
    # Grid area → PKCS#8 PEM, serialised once (the crypto workers take text).
    issuer_pems: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def lease(self) -> Lease:
        return Lease(self.settings.instance_id, self.settings.lease_seconds)
