"""`asft demo`: the whole AsFT story on the embedded toy world (no downloads)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run SFT, AsFT, the l2 control and Safe LoRA on the embedded toy world",
        description="Builds (or reuses) the toy world, computes the anchor, fine-tunes with each "
                    "method, evaluates harmful score and task accuracy, and writes results.json, "
                    "results.md and chart.png to --out.")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="world and training seed (default 0)")
    p.add_argument("--size", default="demo", choices=["demo", "test"], help="toy world size")
    p.add_argument("--cache-dir", help="toy world cache (default $ASFT_CACHE or ~/.cache/asft/toy)")
    p.add_argument("--lam-bite", type=float, help="the larger lambda of the demo (default: the documented one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from asft.demo import BITE_LAMBDA, run_demo
    from asft.report import label

    console = Console()
    doc = run_demo(args.out, size=args.size, seed=args.seed, cache_dir=args.cache_dir,
                   lam_bite=args.lam_bite or BITE_LAMBDA, log=console.print)
    table = Table(title="asft demo: harmful score (HS, lower is better) and task accuracy (FA)")
    for col in ("setting", "HS %", "FA %", "max eig(C)"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in doc["rows"]:
        eig = r.get("c_top_eig_max")
        table.add_row(label(r), f"{r['hs']:.1f}", f"{r['fa']:.1f}", "-" if eig is None else f"{eig:.3g}")
    console.print(table)
    console.print(f"done in {doc['config']['seconds']:.0f}s; results.json, results.md, chart.png in {args.out}")
    return 0
