"""The README's method table, from committed results: per method and harmful ratio p, the setting with
the lowest HS among those whose FA is within 1 point of SFT's, set on the l2 control's HS-FA curve at
that FA (``asft.report.tables``), with the benign-anchor control, the data-equal SafeInstr and the cost
of a step (``benchmarks/results/anchor_cost_*.json``).

    python scripts/anchor_table.py [docs/results/toy_anchors]   # prints markdown
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from asft.methods import all_methods, control_method, plain_method  # noqa: E402
from asft.report.tables import control_curve, label, on_curve  # noqa: E402

FA_WITHIN = 1.0  # FA points below SFT's that still count as "keeps the task"


def rows_of(folder: Path) -> list[dict]:
    path = folder / "results.json"
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def cell(rows: list[dict], p: float) -> list[dict]:
    return [r for r in rows if r.get("p") in (p, None)]


def best(rows: list[dict], method: str, sft_fa: float) -> dict | None:
    kept = [r for r in rows if r["method"] == method and r.get("fa") is not None and r["fa"] >= sft_fa - FA_WITHIN]
    return min(kept, key=lambda r: (r["hs"], -r["fa"], r["lambda"]), default=None)


def pm(r: dict, key: str) -> str:
    std = r.get(f"{key}_std")
    return f"{r[key]:.1f} ± {std:.1f}" if std else f"{r[key]:.1f}"


def on_l2(r: dict, rows: list[dict]) -> str:
    at = on_curve(control_curve(rows), r["fa"])
    if at is None:
        return "outside l2's FA range"
    hs, std, _, _ = at
    gap = (r.get("hs_std") or 0) + std
    word = "**wins**" if r["hs"] < hs - gap else ("l2 safer" if r["hs"] > hs + gap else "same")
    return f"{hs:.1f} ± {std:.1f}: {word}"


def main() -> None:
    main_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs/results/toy_anchors"
    rows = rows_of(main_dir)
    benign = rows_of(main_dir.with_name(main_dir.name + "_benign"))
    cost = {}
    for name in ("toy-demo", "smollm2-135m-instruct"):
        f = REPO / "benchmarks/results" / f"anchor_cost_{name}.json"
        cost[name] = json.loads(f.read_text())["ratio_to_plain"] if f.is_file() else {}
    ps = sorted({r["p"] for r in rows if r.get("p") is not None})
    head = "| method | " + " | ".join(f"p = {p:g}: best λ, HS / FA | l2 at that FA" for p in ps)
    print(head + " | benign anchor (p = 0.1) | step cost toy / SmolLM2 |")
    print("|---|" + "---|---|" * len(ps) + "---|---|")
    plain, control = plain_method().name, control_method().name
    for m in all_methods():
        if not m.fine_tunes:
            continue
        cells = []
        for p in ps:
            rs = cell(rows, p)
            sft = next((r for r in rs if r["method"] == plain), None)
            r = best(rs, m.name, sft["fa"]) if sft else None
            if r is None:
                cells += ["no setting within 1 FA point of SFT", "-"]
                continue
            name = f"λ={r['lambda']:g}" if m.takes_lambda else "-"
            cells += [f"{name}: {pm(r, 'hs')} / {pm(r, 'fa')}", "-" if m.name in (plain, control) else on_l2(r, rs)]
        b = "-"
        if any(r["method"] == m.name for r in benign):
            rs = cell(benign, ps[0])
            sft = next((r for r in rs if r["method"] == plain), None)
            r = best(rs, m.name, sft["fa"]) if sft else None
            b = f"λ={r['lambda']:g}: {pm(r, 'hs')} / {pm(r, 'fa')}" if r and m.takes_lambda else (
                f"{pm(r, 'hs')} / {pm(r, 'fa')}" if r else "none within 1 FA point")
        c = " / ".join(f"{cost[k][m.name]:.2f}x" if m.name in cost[k] else "-" for k in cost)
        print(f"| {label({'method': m.name, 'lambda': 0, 'form': m.forms[0] if m.forms else None}).split(' λ=')[0]} | "
              + " | ".join(cells) + f" | {b} | {c} |")


if __name__ == "__main__":
    main()
