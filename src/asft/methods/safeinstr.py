"""SafeInstr (Bianchi et al., ICLR 2024): mix safety demonstrations into the fine-tuning data."""

from __future__ import annotations

import random
from typing import Sequence

from asft.errors import AsftError
from asft.methods.base import Method, register_method


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


class SafeInstr(Method):
    name = "safeinstr"
    label = "SafeInstr"
    order = 30
    help = "SafeInstr: safety demonstrations mixed into the task data"
    needs_safety_data = True
    default_safety_n = 100  # about 10% of a 1k task set

    def add_data(self, cfg, records: list[dict], tokenizer) -> tuple[list[dict], str | None]:
        from asft.data import load_records

        n = self.default_safety_n if cfg.safety_n is None else cfg.safety_n
        return mix_safety(records, load_records(cfg.safety_data), n, cfg.seed), None


SAFEINSTR = register_method(SafeInstr())
