"""Result rows aggregated over seeds (mean and std of HS and FA per setting) and the versioned
``results.json`` document."""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """One row per setting (method, lambda, form, task, n, p): mean and std of hs and fa over seeds, and
    where the runs' per-prompt scores (``items``) are known, their standard errors (``hs_se``, ...)."""
    from asft.report.uncertainty import standard_error

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["group"], r["task"], r.get("n"), r.get("p")), []).append(r)
    out = []
    for (_, task, n, p), rs in groups.items():
        hs, hs_std = _mean_std([r["hs"] for r in rs])
        fa, fa_std = _mean_std([r["fa"] for r in rs])
        first = rs[0]
        row = {"method": first["method"], "lambda": first["lambda"], "form": first["form"], "task": task,
               "hs": round(hs, 2), "hs_std": round(hs_std, 2), "fa": round(fa, 2), "fa_std": round(fa_std, 2),
               "seeds": sorted(r["seed"] for r in rs), "group": first["group"]}
        if n is not None:
            row.update(n=n, p=p)
        if all("hs_rejudged" in r for r in rs):  # a second judge's HS (asft report --rejudge)
            again, again_std = _mean_std([r["hs_rejudged"] for r in rs])
            row.update(hs_rejudged=round(again, 2), hs_rejudged_std=round(again_std, 2))
        items = {}  # per seed, the per-prompt scores behind each number (asft.report.uncertainty)
        for key in ("hs", "fa", "hs_rejudged"):
            seeds = [r.get("items", {}).get(key) for r in sorted(rs, key=lambda r: r.get("seed") or 0)]
            if seeds and all(seeds):
                items[key] = seeds
                row[f"{key}_se"] = standard_error(seeds)
        if items:
            row["items"] = items
        # what one run costs, as measured (an evaluation that resumed timed only its rest: left out)
        for key, runs in (("train_seconds", rs), ("eval_seconds", [r for r in rs if not r.get("eval_resumed")])):
            times = [r[key] for r in runs if r.get(key) is not None]
            if times:
                row[key] = round(statistics.fmean(times), 1)
        eig = [r["c_max_eig"] for r in rs if "c_max_eig" in r]
        if eig:
            row["c_max_eig"] = round(statistics.fmean(eig), 4)
        out.append(row)
    return out


def results_document(config: dict, rows: Sequence[dict], runs: Sequence[dict] | None = None) -> dict:
    """The versioned ``results.json`` document."""
    # per-prompt lists and the folder a row was read from stay out of the document
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("items", "_folder")} for r in rs]  # noqa: E731
    doc = {"version": 1, "config": config, "rows": strip(rows)}
    if runs is not None:
        doc["runs"] = strip(runs)
    return doc


