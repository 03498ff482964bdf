"""Random moments in tests (kill times, counts) from a seed that is printed, so a
failure can be replayed: STAMP_TEST_SEED=<seed> pytest …"""

from __future__ import annotations

import os
import random


def seeded_random(name: str) -> random.Random:
    given = os.environ.get("STAMP_TEST_SEED")
    seed = int(given) if given else random.randrange(2**32)
    print(f"\n{name}: random seed {seed} (replay with STAMP_TEST_SEED={seed})")
    return random.Random(seed)
