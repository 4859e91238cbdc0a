"""`asft demo`: the whole AsFT story on the embedded toy world (no downloads)."""

from __future__ import annotations

import argparse

from asft.cli import at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run SFT, AsFT, the l2 control and Safe LoRA on the embedded toy world",
        description="Builds (or reuses) the toy world, computes the anchor, fine-tunes with each "
                    "method, evaluates harmful score and task accuracy, and writes the report (results.json, "
                    "results.md, plots/, report.html) and the safety landscape to --out. The demo is an "
                    "experiment: the config it ran is OUT/demo.yaml (copy it, edit it, `asft experiment` it).",
        epilog="example: asft demo --out runs/demo --workers 2")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (default 0 1 2)")
    p.add_argument("--lambdas", type=float, nargs="+", help="lambda curve of asft and l2 (default 1 10 30 100)")
    p.add_argument("--world-seed", type=int, default=0,
                   help="toy world seed (default 0: the world shipped in the package; others are built)")
    p.add_argument("--size", default="demo", choices=["demo", "test"], help="toy world size")
    p.add_argument("--workers", type=at_least(1), help="runs at once, one thread each (default: usable cores, at most 4)")
    p.add_argument("--cache-dir", help="toy world cache (default $ASFT_CACHE or ~/.cache/asft/toy)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console
    from rich.table import Table

    from asft.experiments.demo import run_demo
    from asft.report import label

    console = make_console()
    doc = run_demo(args.out, size=args.size, world_seed=args.world_seed, seeds=args.seeds,
                   lambdas=args.lambdas, cache_dir=args.cache_dir, log=console.print, workers=args.workers)
    n = len(doc["config"]["seeds"])
    table = Table(title=f"asft demo: harmful score (HS, lower is better) and task accuracy (FA), "
                        f"mean ± std over {n} seeds")
    for col in ("setting", "HS %", "FA %", "max eig(C)"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for r in doc["rows"]:
        eig = r.get("c_max_eig")
        table.add_row(label(r), f"{r['hs']:.1f} ± {r['hs_std']:.1f}", f"{r['fa']:.1f} ± {r['fa_std']:.1f}",
                      "-" if eig is None else f"{eig:.3g}")
    console.print(table)
    for line in doc["verdict"]:
        console.print(f"- {line}")
    if "landscape" in doc:
        console.print(f"safety landscape ({doc['landscape']['seconds']:.0f}s): {', '.join(doc['landscape']['pictures'])}")
        for line in doc["landscape"]["summary"]:
            console.print(f"- {line}")
    plots = f"plots/ ({len(doc['plots'])} charts), " if doc.get("plots") else ""
    console.print(f"done in {doc['config']['seconds']:.0f}s ({doc['config']['workers']} runs at a time); "
                  f"results.json, results.md, {plots}report.html and demo.yaml (the config it ran) in {args.out}")
    return 0
