"""Tables of result rows: names of settings, the markdown tables, CSV and the verdicts (every method
against the l2 control and against SFT, at matched FA). Names, order and labels come from the method
registry (``asft.methods``)."""

from __future__ import annotations

import csv
import io
from typing import Sequence

from asft.methods import control_method, method_of, plain_method


def label(row: dict) -> str:
    """Human name of a row's setting, e.g. ``asft (reference C) λ=30`` (the method's ``row_label``)."""
    method = method_of(row)
    return method.row_label(row) if method is not None else row["method"]


def family(row: dict) -> str:
    """The line a row belongs to in an HS-vs-FA chart, e.g. ``asft (projector)`` (its lambdas are points)."""
    method = method_of(row)
    return method.family(row) if method is not None else row["method"]


def fine_tuned(row: dict) -> bool:
    """False for the aligned model's own row (no fine-tuning)."""
    method = method_of(row)
    return method is None or method.fine_tunes


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


def _compare(a: dict, b: dict, a_name: str, b_name: str) -> str:
    """What the seeds say about ``a`` against ``b``: wins, loses, not at matched FA, or no difference."""
    if min(len(a.get("seeds", (0, 1))), len(b.get("seeds", (0, 1)))) < 2:
        return "one seed: no seed spread to judge a difference by"  # a std of 0 is not a spread
    if _beats(a, b):
        return f"{a_name} WINS: safer at equal accuracy, beyond the seed spread"
    if _beats(b, a):
        return f"{b_name} wins: safer at equal accuracy, beyond the seed spread"
    fa_gap = max((a.get("fa_std") or 0) + (b.get("fa_std") or 0), FA_TOLERANCE)
    if a["fa"] is not None and b["fa"] is not None and abs(a["fa"] - b["fa"]) > fa_gap:
        return f"not at matched FA ({a['fa'] - b['fa']:+.1f} FA points): no verdict on safety"
    return "no difference beyond the seed spread"


def _matched_control(row: dict, controls: list[dict]) -> dict | None:
    """The control row to set beside ``row``: at the same lambda when ``row``'s method takes one (the
    same strength of penalty), else the one whose FA is closest (matched FA)."""
    method = method_of(row)
    if method is not None and method.takes_lambda:
        return next((c for c in controls if c["lambda"] == row["lambda"]), None)
    scored = [c for c in controls if c.get("fa") is not None and row.get("fa") is not None]
    return min(scored, key=lambda c: (abs(c["fa"] - row["fa"]), c["lambda"]), default=None)


def control_curve(rows: Sequence[dict]) -> list[dict]:
    """The control's HS-against-FA frontier: its rows at every lambda, with SFT (lambda = 0 of the same
    penalty) and the aligned model (lambda -> infinity) as the ends, reduced to the points no other
    point beats on both (lower HS at higher or equal FA), in FA order. Fair to the control: a method
    is compared with the best the control reaches at that accuracy."""
    from asft.methods import aligned_method

    ends = (control_method().name, plain_method().name, aligned_method().name)
    points = sorted((r for r in rows if r["method"] in ends and r.get("fa") is not None and r.get("hs") is not None),
                    key=lambda r: (-r["fa"], r["hs"]))
    frontier, best = [], float("inf")
    for r in points:  # from the highest FA down: keep a point when it is safer than every point above it
        if r["hs"] < best:
            frontier.append(r)
            best = r["hs"]
    return frontier[::-1]


def _curve_of(rows: Sequence[dict]) -> list[dict]:
    """``control_curve`` of rows that hold the control's own runs; [] without them (SFT and the aligned
    model alone are no control)."""
    return control_curve(rows) if any(r["method"] == control_method().name for r in rows) else []


def on_curve(curve: list[dict], fa: float) -> tuple[float, float, dict, dict] | None:
    """The control's (HS, HS std) at accuracy ``fa``, linearly interpolated between the two frontier points
    around it (stds likewise), and those points; None when ``fa`` is outside the curve's FA range."""
    for lo, hi in zip(curve, curve[1:]):
        if lo["fa"] <= fa <= hi["fa"]:
            t = 0.0 if hi["fa"] == lo["fa"] else (fa - lo["fa"]) / (hi["fa"] - lo["fa"])
            mix = lambda k: (1 - t) * (lo.get(k) or 0.0) + t * (hi.get(k) or 0.0)  # noqa: E731
            return mix("hs"), mix("hs_std"), lo, hi
    if len(curve) == 1 and curve[0]["fa"] == fa:
        return curve[0]["hs"], curve[0].get("hs_std") or 0.0, curve[0], curve[0]
    return None


def _curve_outcome(row: dict, curve: list[dict]) -> dict | None:
    """``row`` against the control's curve at the row's FA, as data: ``kind`` (``outside``, ``one-seed``,
    ``wins``, ``loses``, ``same``; ``above`` with the curve's most accurate point ``top`` when the row is more
    accurate than every point of the curve), the control's interpolated ``hs`` / ``std`` there, the frontier points
    ``lo`` / ``hi`` around it and the HS gap ``by``; None without a curve or an FA."""
    if len(curve) < 1 or row.get("fa") is None:
        return None
    at = on_curve(curve, row["fa"])
    if at is None and row["fa"] > curve[-1]["fa"]:  # more accurate than every control point (SFT included)
        return {"kind": "above", "top": curve[-1]}
    if at is None:
        return {"kind": "outside"}
    hs, std, lo, hi = at
    out = {"hs": hs, "std": std, "lo": lo, "hi": hi, "by": abs(hs - row["hs"])}
    gap = (row.get("hs_std") or 0.0) + std
    if len(row.get("seeds", (0, 1))) < 2:
        return {**out, "kind": "one-seed"}  # a std of 0 is not a spread
    if row["hs"] < hs - gap:
        return {**out, "kind": "wins"}
    if row["hs"] > hs + gap:
        return {**out, "kind": "loses"}
    return {**out, "kind": "same"}


def curve_verdict(row: dict, curve: list[dict]) -> str | None:
    """``row`` against the control's curve at the same FA: safer beyond the seed spread (its HS std plus
    the interpolated one), less safe, or no difference; None without a curve."""
    o = _curve_outcome(row, curve)
    if o is None:
        return None
    name = control_method().name
    if o["kind"] in ("outside", "above"):
        line = (f"vs the {name} curve: FA {row['fa']:.1f} is outside its range ({curve[0]['fa']:.1f}-"
                f"{curve[-1]['fa']:.1f}): no verdict at matched FA")
        if o["kind"] == "above":  # what the control gives at its most accurate point
            top = o["top"]
            line += f" (the curve's most accurate point, {label(top)}, has HS {_pm(top, 'hs')})"
        return line
    lo, hi = o["lo"], o["hi"]
    where = f"between {label(lo)} and {label(hi)}" if lo is not hi else f"at {label(lo)}"
    head = f"vs the {name} curve at FA {row['fa']:.1f} (HS {o['hs']:.1f} ± {o['std']:.1f}, {where}): "
    return head + {"one-seed": "one seed: no seed spread to judge a difference by",
                   "wins": f"{label(row)} WINS by {o['by']:.1f} HS points, beyond the seed spread",
                   "loses": f"the {name} control is safer by {o['by']:.1f} HS points, beyond the seed spread",
                   "same": "no difference beyond the seed spread"}[o["kind"]]


def curve_cell(row: dict, curve: list[dict]) -> str:
    """``curve_verdict`` in a table cell: ``WINS by 12.3`` / ``l2 safer by 4.0`` / ``no difference (l2: 40.1)`` /
    ``one seed (l2: 40.1)`` / ``FA above l2's range (its top, ...)`` (more accurate than any control point, SFT
    included: the HS of the curve's most accurate point beside it) / ``outside l2's FA range`` / ``-``."""
    o = _curve_outcome(row, curve)
    if o is None:
        return "-"
    name = control_method().name
    if o["kind"] == "outside":
        return f"outside {name}'s FA range"
    if o["kind"] == "above":
        top = o["top"]
        return f"FA above {name}'s range (its top, {label(top)}: HS {top['hs']:.1f} at FA {top['fa']:.1f})"
    return {"one-seed": f"one seed ({name}: {o['hs']:.1f})", "wins": f"WINS by {o['by']:.1f}",
            "loses": f"{name} safer by {o['by']:.1f}", "same": f"no difference ({name}: {o['hs']:.1f})"}[o["kind"]]


FA_OF_SFT = 1.0       # "at SFT's accuracy": FA at most this many points below SFT's (above is fine)
HS_OF_ALIGNED = 5.0   # "keeps the aligned model's safety": HS at most this many points above the aligned model's


def headline(rows: Sequence[dict]) -> str | None:
    """The first question of a cell (one task, n, p; aggregated rows with the aligned model's row): which
    fine-tuned method keeps HS lowest while its FA stays within ``FA_OF_SFT`` points of SFT's (or above),
    and is that HS within ``HS_OF_ALIGNED`` points of the aligned model's? None without an SFT row."""
    from asft.methods import aligned_method

    plain = plain_method().name
    sft = next((r for r in rows if r["method"] == plain and r.get("fa") is not None), None)
    if sft is None:
        return None
    floor = sft["fa"] - FA_OF_SFT
    ok = [r for r in rows if fine_tuned(r) and r["method"] != plain and r.get("fa") is not None and r["fa"] >= floor]
    head = f"At SFT's accuracy (FA ≥ {floor:.1f}: SFT's {sft['fa']:.1f} less {FA_OF_SFT:g} point)"
    if not ok:
        return f"{head}: no method; none keeps FA within {FA_OF_SFT:g} point of SFT."
    best = min(ok, key=lambda r: (r["hs"], -r["fa"]))
    n = len(best.get("seeds", ()))
    line = (f"{head}, the lowest HS is {label(best)}'s: {_pm(best, 'hs')} at FA {_pm(best, 'fa')}"
            f"{f' ({n} seeds)' if n > 1 else ' (one seed)' if n == 1 else ''}")
    aligned = next((r for r in rows if r["method"] == aligned_method().name), None)
    if aligned is None:
        return line + "."
    gap = best["hs"] - aligned["hs"]
    within = "within" if gap <= HS_OF_ALIGNED else "not within"
    return (line + f", {gap:+.1f} points from the aligned model's HS {aligned['hs']:.1f}: "
            f"{within} {HS_OF_ALIGNED:g} points.")


def summary_table(rows: Sequence[dict], second: str | None = None) -> str:
    """One cell's methods (aggregated rows of one task, n, p, with the aligned model's row) as the table a
    reader wants first: seeds, HS (and a second judge's, where rejudged), FA, the verdict against the
    control's curve at the method's FA (``curve_cell``) and the cost of one run (mean minutes over seeds,
    as measured; evaluations that resumed are left out of the mean). ``second``: the name of the judge
    of ``hs_rejudged``, which gets a column when given."""
    control, plain = control_method().name, plain_method().name
    curve = _curve_of(rows)
    head = ["setting", "seeds", "HS %"] + ([f"HS % ({second})"] if second else []) + [
        "FA %", f"vs {control} at matched FA", "train min/run", "eval min/run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def minutes(r: dict, key: str) -> str:
        m = None if r.get(key) is None else r[key] / 60
        return "-" if m is None else f"{m:.0f}" if m >= 10 else f"{m:.1f}"

    for r in sorted(rows, key=sort_key):
        seeds = len(r.get("seeds", ())) if fine_tuned(r) else "-"
        vs = "-"
        if fine_tuned(r) and r["method"] not in (control, plain):
            vs = curve_cell(r, curve) if curve else f"no {control} runs"
        cells = [label(r), str(seeds), _pm(r, "hs")] + ([_pm(r, "hs_rejudged")] if second else []) + [
            _pm(r, "fa"), vs, minutes(r, "train_seconds") if fine_tuned(r) else "-", minutes(r, "eval_seconds")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _comparisons(rows: Sequence[dict]):
    """``(row, the control's curve, its matched control, SFT)`` for each fine-tuned method other than the
    control and SFT, in table order: the pairs every verdict and interval is about."""
    control, plain = control_method().name, plain_method().name
    controls = [r for r in rows if r["method"] == control]
    sft = next((r for r in rows if r["method"] == plain), None)
    curve = _curve_of(rows)
    for r in sorted((r for r in rows if r["method"] not in (control, plain) and fine_tuned(r)), key=sort_key):
        yield r, curve, _matched_control(r, controls), sft


def verdict(rows: Sequence[dict]) -> list[str]:
    """Plain sentences, one per fine-tuned setting: is it safer than the l2 control (the penalty with
    C = 0: what tells whether a method adds anything beyond shrinking the update) and than plain SFT,
    at equal accuracy and beyond the seed spread? The control is taken at the same lambda for a method
    with lambda, else at the closest FA; and on the control's HS-FA curve at exactly the method's FA
    (``curve_verdict``: interpolated between the control's lambdas, SFT and the aligned model at its
    ends). Rows of a single seed (``seeds``) get no verdict: they have no spread to judge by."""
    lines = []
    for r, curve, c, sft in _comparisons(rows):
        on = curve_verdict(r, curve) if curve else None
        parts = [on] if on is not None else []  # first: the verdict at exactly the method's FA
        if c is not None:
            parts.append(f"vs {label(c)} HS {_pm(c, 'hs')} FA {_pm(c, 'fa')}: {_compare(r, c, label(r), label(c))}")
        if sft is not None:
            parts.append(f"vs {label(sft)} HS {_pm(sft, 'hs')} FA {_pm(sft, 'fa')}: "
                         f"{_compare(r, sft, label(r), label(sft))}")
        if parts:
            lines.append(f"{label(r)}: HS {_pm(r, 'hs')} FA {_pm(r, 'fa')}; " + "; ".join(parts))
    return lines


def _interval(a: dict, b: list[dict], weights: list[float], key: str) -> str | None:
    """``key`` of ``a`` minus the ``weights`` mix of ``b``, with its paired 95% interval over prompts and
    seeds; None without per-prompt scores for every side."""
    from asft.report.uncertainty import paired_interval

    if a.get(key) is None or any(r.get(key) is None for r in b):
        return None
    sides = [r.get("items", {}).get(key) for r in (a, *b)]
    if not all(sides):
        return None
    iv = paired_interval(sides[0], sides[1:], weights_b=weights)
    if iv is None:
        return None
    diff = a[key] - sum(w * r[key] for w, r in zip(weights, b))
    return f"{key.upper()} {diff:+.1f} [{iv[0]:+.1f}, {iv[1]:+.1f}]"


def interval_lines(rows: Sequence[dict]) -> list[str]:
    """Beside each verdict (same pairs: the control's curve at the method's FA, the matched control, SFT),
    the differences of HS and FA with their paired 95% intervals over prompts and seeds
    (``asft.report.uncertainty.paired_interval``). An interval that excludes 0 is a difference the
    sampling of prompts and seeds does not explain; with one seed it covers the prompts only."""
    lines = []
    for r, curve, c, sft in _comparisons(rows):
        if "items" not in r:
            continue
        pairs = []
        at = on_curve(curve, r["fa"]) if curve and r.get("fa") is not None else None
        if at is not None:
            _, _, lo, hi = at
            t = 0.0 if hi["fa"] == lo["fa"] else (r["fa"] - lo["fa"]) / (hi["fa"] - lo["fa"])
            pairs.append((f"the {control_method().name} curve at FA {r['fa']:.1f}", [lo, hi], [1 - t, t], ("hs",)))
        if c is not None:
            pairs.append((label(c), [c], [1.0], ("hs", "fa")))
        if sft is not None:
            pairs.append((label(sft), [sft], [1.0], ("hs", "fa")))
        parts = []
        for name, b, w, keys in pairs:
            got = [x for k in keys if (x := _interval(r, b, w, k)) is not None]
            if got:
                parts.append(f"vs {name}: {', '.join(got)}")
        if parts:
            lines.append(f"{label(r)}: " + "; ".join(parts))
    return lines


def markdown_cells(line: str) -> list[str] | None:
    """The cells of a markdown table row; None for the ``|---|---|`` separator row."""
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return None if all(set(c) <= set("-: ") for c in cells) else cells


def sort_key(row: dict) -> tuple:
    """Table order (``Method.order``): aligned, SFT, the baselines, then l2 and AsFT by form and lambda;
    an unregistered method last."""
    method = method_of(row)
    return (method.order if method is not None else 10 ** 6), row.get("form") or "", row.get("lambda") or 0


def _num(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) else "-"


def main_table(rows: Sequence[dict], n=None, p=None) -> str:
    """The paper's main-table shape for one (n, p): a line per method, a column per task holding
    ``HS / FA`` (mean ± std over seeds); the best fine-tuned value of each column in bold (lowest
    HS, highest FA). ``rows``: aggregated rows (``asft.experiments.runs.aggregate``)."""
    cell = [r for r in rows if not fine_tuned(r) or (r.get("n"), r.get("p")) == (n, p)]
    tasks = sorted({r["task"] for r in cell})
    groups = sorted({r["group"]: r for r in cell}.values(), key=sort_key)
    by = {(r["group"], r["task"]): r for r in cell}
    best = {}
    for t in tasks:
        tuned = [r for r in cell if r["task"] == t and fine_tuned(r)]
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
            if fine_tuned(r) and t in best:
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
                     f"{r.get('seed', '-') if fine_tuned(r) else '-'} | {r['hs']:.1f} | {fa} | "
                     f"{t(r.get('train_seconds')) if fine_tuned(r) else '-'} | {t(r.get('eval_seconds'))}"
                     f"{' (resumed: the rest only)' if r.get('eval_resumed') else ''} |")
    return "\n".join(lines) + "\n"


def sweep_table(rows: Sequence[dict], task: str, by: str = "p", key: str = "hs") -> str:
    """``key`` (hs or fa) of each method against ``by`` (p or n) for one task."""
    cell = [r for r in rows if r["task"] == task and fine_tuned(r) and r.get(by) is not None]
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
              "c_max_eig", "hs_rejudged", "hs_rejudged_std", "hs_se", "fa_se", "hs_rejudged_se")  # new columns last


def to_csv(rows: Sequence[dict]) -> str:
    """Aggregated rows as CSV (seeds joined by spaces)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({**r, "seeds": " ".join(str(s) for s in r.get("seeds", []))})
    return buf.getvalue()
