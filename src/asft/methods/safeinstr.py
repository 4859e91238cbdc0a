"""SafeInstr (Bianchi et al., ICLR 2024): mix safety demonstrations into the fine-tuning data."""

from __future__ import annotations

import random
from typing import Sequence

from asft.errors import AsftError


def mix_safety(task: Sequence[dict], safety: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
    """``task`` plus ``n`` demonstrations drawn (seeded, without replacement) from ``safety``,
    shuffled together. The demonstrations are added, never substituted for task records."""
    if n < 0:
        raise AsftError(f"the number of safety demonstrations must be >= 0, got {n}")
    if n > len(safety):
        raise AsftError(f"{n} safety demonstrations asked for, the safety data has {len(safety)}")
    rng = random.Random(f"asft-safety/{seed}")
    rows = list(task) + [dict(r) for r in rng.sample(list(safety), n)]
    rng.shuffle(rows)
    return rows
