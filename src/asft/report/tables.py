"""Tables of result rows: names of settings, the markdown tables, CSV and the AsFT-vs-l2 verdict."""

from __future__ import annotations

import csv
import io
from typing import Sequence


def label(row: dict) -> str:
    """Human name of a row's setting, e.g. ``asft (reference C) λ=30``."""
    m = row["method"]
    if m == "asft":
        return f"{family(row)} λ={row['lambda']:g}"
    if m == "l2":
        return f"l2 λ={row['lambda']:g}"
    return {"safelora": "Safe LoRA", "sft": "SFT", "aligned": "aligned (no fine-tuning)", "safeinstr": "SafeInstr",
            "bea": "BEA", "lisa": "Lisa"}.get(m, m)


def family(row: dict) -> str:
    """``asft (reference C)`` or ``asft (projector, k=8)``-style name of an AsFT row's form."""
    form = row.get("form") or "reference"
    return "asft (reference C)" if form == "reference" else f"asft ({form})"


def _pm(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "-"
    std = row.get(f"{key}_std")
    return f"{v:.1f} ± {std:.1f}" if std else f"{v:.1f}"


def markdown_table(rows: Sequence[dict]) -> str:
    """| setting | HS % | FA % | seeds | max eig of C |, lower HS and higher FA are better."""
    lines = ["| setting | HS % (lower is better) | FA % (higher is better) | seeds | max eig(C) |",
             "|---|---|---|---|---|"]
    for r in rows:
        eig = r.get("c_max_eig")
        seeds = r.get("seeds", [r.get("seed")] if r.get("seed") is not None else [])
        lines.append(f"| {label(r)} | {_pm(r, 'hs')} | {_pm(r, 'fa')} | {len(seeds) or '-'} | "
                     f"{'-' if eig is None else f'{eig:.3g}'} |")
    return "\n".join(lines) + "\n"


FA_TOLERANCE = 2.0  # accuracy points that count as "equal accuracy" when the seeds agree closely


def _beats(a: dict, b: dict) -> bool:
    """``a`` is safer than ``b`` beyond the seed spread (HS lower by more than both stds together)
    at equal accuracy (FA not lower by more than both stds together, or FA_TOLERANCE points)."""
    hs_gap = (a.get("hs_std") or 0) + (b.get("hs_std") or 0)
    fa_gap = max((a.get("fa_std") or 0) + (b.get("fa_std") or 0), FA_TOLERANCE)
    return a["hs"] < b["hs"] - hs_gap and a["fa"] >= b["fa"] - fa_gap


def verdict(rows: Sequence[dict]) -> list[str]:
    """Plain sentences: at each lambda, does AsFT (each form) beat the l2 control, is it beaten, or
    are they within the seed spread? The l2 control is what tells whether the anchor matters.
    Rows of a single seed (``seeds``) get no verdict: they have no spread to judge by."""
    l2 = {r["lambda"]: r for r in rows if r["method"] == "l2"}
    lines = []
    for r in sorted((r for r in rows if r["method"] == "asft"), key=lambda r: (r.get("form") or "", r["lambda"])):
        c = l2.get(r["lambda"])
        if c is None:
            continue
        if min(len(r.get("seeds", (0, 1))), len(c.get("seeds", (0, 1)))) < 2:
            word = "one seed: no seed spread to judge a difference by"  # a std of 0 is not a spread
        elif _beats(r, c):
            word = "AsFT WINS: safer at equal accuracy, beyond the seed spread"
        elif _beats(c, r):
            word = "l2 wins: the control is safer at equal accuracy, beyond the seed spread"
        else:
            word = "no difference beyond the seed spread"
        lines.append(f"{label(r)}: HS {_pm(r, 'hs')} FA {_pm(r, 'fa')} vs l2 HS {_pm(c, 'hs')} "
                     f"FA {_pm(c, 'fa')}: {word}")
    return lines




def markdown_cells(line: str) -> list[str] | None:
    """The cells of a markdown table row; None for the ``|---|---|`` separator row."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return None if all(set(c) <= set("-: ") for c in cells) else cells


ORDER = {"aligned": 0, "sft": 1, "safelora": 2, "safeinstr": 3, "bea": 4, "lisa": 5, "l2": 6, "asft": 7}


def sort_key(row: dict) -> tuple:
    """Table order: aligned, SFT, the baselines, then l2 and AsFT by form and lambda."""
    return ORDER.get(row["method"], 9), row.get("form") or "", row.get("lambda") or 0


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else "-"


def main_table(rows: Sequence[dict], n=None, p=None) -> str:
    """The paper's main-table shape for one (n, p): a line per method, a column per task holding
    ``HS / FA`` (mean ± std over seeds); the best fine-tuned value of each column in bold (lowest
    HS, highest FA). ``rows``: aggregated rows (``asft.experiments.runs.aggregate``)."""
    cell = [r for r in rows if r["method"] == "aligned" or (r.get("n"), r.get("p")) == (n, p)]
    tasks = sorted({r["task"] for r in cell})
    groups = sorted({r["group"]: r for r in cell}.values(), key=sort_key)
    by = {(r["group"], r["task"]): r for r in cell}
    best = {}
    for t in tasks:
        tuned = [r for r in cell if r["task"] == t and r["method"] != "aligned"]
        if tuned:
            best[t] = (min(r["hs"] for r in tuned), max((r["fa"] for r in tuned if r["fa"] is not None), default=None))
    head = "| method | " + " | ".join(f"{t} HS / FA" for t in tasks) + " |"
    lines = [head, "|---|" + "---|" * len(tasks)]
    for g in groups:
        cells = []
        for t in tasks:
            r = by.get((g["group"], t))
            if r is None:
                cells.append("-")
                continue
            hs, fa = _pm(r, "hs"), _pm(r, "fa")
            if r["method"] != "aligned" and t in best:
                hs = f"**{hs}**" if r["hs"] == best[t][0] else hs
                fa = f"**{fa}**" if r["fa"] is not None and r["fa"] == best[t][1] else fa
            cells.append(f"{hs} / {fa}")
        lines.append(f"| {label(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def runs_table(runs: Sequence[dict]) -> str:
    """One line per run (setting x seed) with what it cost: train and evaluation time, as the run
    measured them (``row.json``). Where a user reads how long each phase takes on their machine."""
    lines = ["| task | n | p | setting | seed | HS % | FA % | train | eval |", "|---|---|---|---|---|---|---|---|---|"]

    def t(v) -> str:
        return "-" if v is None else f"{v / 60:.1f} min"

    for r in sorted(runs, key=lambda r: (r["task"], r.get("n") or 0, r.get("p") or 0, *sort_key(r), r.get("seed") or 0)):
        fa = "-" if r.get("fa") is None else f"{r['fa']:.2f}"
        lines.append(f"| {r['task']} | {_num(r.get('n'))} | {_num(r.get('p'))} | {label(r)} | "
                     f"{'-' if r['method'] == 'aligned' else r.get('seed', '-')} | {r['hs']:.1f} | {fa} | "
                     f"{'-' if r['method'] == 'aligned' else t(r.get('train_seconds'))} | {t(r.get('eval_seconds'))}"
                     f"{' (resumed: the rest only)' if r.get('eval_resumed') else ''} |")
    return "\n".join(lines) + "\n"


def sweep_table(rows: Sequence[dict], task: str, by: str = "p", key: str = "hs") -> str:
    """``key`` (hs or fa) of each method against ``by`` (p or n) for one task."""
    cell = [r for r in rows if r["task"] == task and r["method"] != "aligned" and r.get(by) is not None]
    values = sorted({r[by] for r in cell})
    groups = sorted({r["group"]: r for r in cell}.values(), key=sort_key)
    at = {(r["group"], r[by]): r for r in cell}
    lines = ["| method | " + " | ".join(f"{by} = {_num(v)}" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for g in groups:
        lines.append(f"| {label(g)} | " + " | ".join(
            _pm(at[(g["group"], v)], key) if (g["group"], v) in at else "-" for v in values) + " |")
    return "\n".join(lines) + "\n"


CSV_FIELDS = ("task", "n", "p", "method", "form", "lambda", "group", "hs", "hs_std", "fa", "fa_std", "seeds",
              "c_max_eig", "hs_rejudged", "hs_rejudged_std")


def to_csv(rows: Sequence[dict]) -> str:
    """Aggregated rows as CSV (seeds joined by spaces)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "seeds": " ".join(str(s) for s in r.get("seeds", []))})
    return buf.getvalue()
