"""Uncertainty over prompts, beside the spread over seeds.

A run's HS is the mean of 250 flags and its FA the mean of 872 correct/incorrect answers, so each
number has a sampling error over prompts that the seed std (2-3 seeds) does not show. Two measures,
both from the per-prompt records a run keeps (``eval/<suite>.jsonl[.gz]``: ``flagged`` / ``correct``):

- ``standard_error``: lm-eval's per-number standard error, for a mean over seeds: the seeds' proportions
  m_s over n_s items give se = sqrt(sum_s m_s (1 - m_s) / (n_s - 1)) / k (in % points);
- ``paired_interval``: a 95% interval of the difference of two settings' means (HS or FA), by a paired
  bootstrap: prompts resampled with replacement, the same prompts for both settings (they answered the
  same ones), and the seeds resampled, the same seeds for both when both ran the same seeds; 2000 draws
  of a fixed generator, so a report is the same on every machine.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from asft.fileio import read_json

DRAWS = 2000
METRICS = {"hs": "flagged", "fa": "correct"}  # a row's number -> the per-prompt field behind it


def run_items(eval_dir: Path) -> dict[str, list[int]]:
    """``{"hs": [0/1 per harmful prompt], "fa": [0/1 per task item]}`` of one run's evaluation folder
    (the suites whose result has an HS or an FA and whose answers are kept), in prompt order."""
    out: dict[str, list[int]] = {}
    for res in sorted(Path(eval_dir).glob("*.result.json")):
        summary = read_json(res).get("summary", {})
        for metric, field in METRICS.items():
            if summary.get(metric) is None or metric in out:
                continue
            path = res.with_name(f"{summary['suite']}.jsonl")
            path = path if path.is_file() else path.with_name(path.name + ".gz")
            if not path.is_file():
                continue
            records = sorted(read_json(path), key=lambda r: r.get("i", 0))
            if records and all(field in r for r in records):
                out[metric] = [int(bool(r[field])) for r in records]
    return out


def standard_error(seeds: Sequence[Sequence[int]]) -> float | None:
    """Standard error (% points) over prompts of the mean over seeds of per-prompt 0/1 scores."""
    seeds = [s for s in seeds if len(s) > 1]
    if not seeds:
        return None
    var = sum((m := sum(s) / len(s)) * (1 - m) / (len(s) - 1) for s in seeds)
    return round(100 * math.sqrt(var) / len(seeds), 2)


def paired_interval(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]], level: float = 0.95,
                    weights_b: Sequence[float] | None = None, seed: int = 0) -> tuple[float, float] | None:
    """A ``level`` interval (% points) of mean(a) - mean(b), each a list of seeds' per-prompt scores on
    the same prompts. ``b`` may be several settings mixed with ``weights_b`` (a point on the l2 curve
    between two of its lambdas): then ``b`` is a list of such settings, each a list of seeds.
    None when the prompts differ (not paired) or a side has no records."""
    import numpy as np

    sides_b = b if weights_b is not None else [b]
    weights = list(weights_b) if weights_b is not None else [1.0]
    groups = [np.asarray(a, dtype=np.float64)] + [np.asarray(s, dtype=np.float64) for s in sides_b]
    if any(g.ndim != 2 or g.shape[0] == 0 for g in groups) or len({g.shape[1] for g in groups}) != 1:
        return None
    n = groups[0].shape[1]
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, n, size=(DRAWS, n))
    k = {g.shape[0] for g in groups}
    # the same seeds drawn for every setting when they ran the same number of seeds (seed s of two
    # methods shares its data order and LoRA start); otherwise each setting's own
    shared = rng.integers(0, k.pop(), size=(DRAWS, groups[0].shape[0])) if len(k) == 1 else None

    def draw(g):  # a setting's mean over resampled seeds, on each draw's prompts: (DRAWS,)
        seeds = shared if shared is not None else rng.integers(0, g.shape[0], size=(DRAWS, g.shape[0]))
        per_seed = np.take_along_axis(g[seeds], prompts[:, None, :].repeat(g.shape[0], 1), axis=2).mean(axis=2)
        return per_seed.mean(axis=1)

    diff = draw(groups[0]) - sum(w * draw(g) for w, g in zip(weights, groups[1:]))
    lo, hi = np.quantile(diff, [(1 - level) / 2, 1 - (1 - level) / 2])
    return round(100 * float(lo), 1), round(100 * float(hi), 1)
