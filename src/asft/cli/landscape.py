"""`asft landscape`: scan, measure and draw the safety landscape around an aligned model."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from asft.data import TEMPLATES
    from asft.evaluation.judges import judge_names
    from asft.evaluation.suites import suite_names

    p = sub.add_parser(
        "landscape", help="scan the safety landscape along the alignment direction and a random orthogonal one",
        description="Scores theta + alpha d for the alignment direction (from the anchor), a seeded random "
                    "direction orthogonal to it, and optionally an adapter's update, on the anchor's target "
                    "modules (each scaled to its weight's norm); optionally the 2D plane of the first two. "
                    "Writes landscape.json (curves, basin widths, VISAGE), PNGs and summary.txt.",
        epilog="example: asft landscape --model toy/aligned --anchor toy/anchor.safetensors --suite toy-harmful "
               "--judge toy --data-dir toy/eval --out runs/landscape")
    p.add_argument("--model", required=True, metavar="DIR", help="the aligned model")
    p.add_argument("--anchor", required=True, metavar="FILE", help="its anchor (asft anchor)")
    p.add_argument("--dirs", default="align,random", help="directions to scan: align,random,adapter")
    p.add_argument("--adapter", metavar="DIR", help="adapter whose update is the 'adapter' direction")
    p.add_argument("--range", nargs=2, type=float, default=[-0.5, 0.5], metavar=("A", "B"),
                   help="alpha from A to B (default -0.5 0.5, as llm-landscape; with --norm none, -1 is the base)")
    p.add_argument("--steps", type=int, default=20, help="intervals (default 20: 21 points)")
    p.add_argument("--2d", dest="two_d", action="store_true", help="also the align x random plane")
    p.add_argument("--norm", default="layer", choices=["layer", "none"],
                   help="layer: each module's direction scaled to its weight norm (default); none: raw")
    p.add_argument("--suite", default="harmful",
                   help=f"harmful-score suite (of {', '.join(suite_names())}; default harmful)")
    p.add_argument("--task-suite", help="also score task accuracy on this suite (e.g. sst2, toy-topic)")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="folder of the suites' files")
    p.add_argument("--judge", default="keyword", choices=judge_names(offline=True),
                   help="an offline judge (the landscape judges hundreds of answer sets)")
    p.add_argument("--template", default="chat", choices=TEMPLATES, help="prompt format (default chat)")
    p.add_argument("--limit", type=int, default=80, help="prompts per point (default 80)")
    p.add_argument("--max-new-tokens", type=int,
                   help="answer length per prompt (default: the suite's, 512 for harmful); the keyword "
                        "judge reads refusals from the first sentences, so 64-128 makes a real-model scan "
                        "several times faster")
    p.add_argument("--mark", nargs="*", default=[], metavar="ADAPTER", help="adapters to place on the plane")
    p.add_argument("--seed", type=int, default=0, help="seed of the random direction")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of landscape.json and the pictures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.experiments.landscape import run_landscape

    console = make_console()
    doc = run_landscape(args.model, args.anchor, args.out, dirs=[d for d in args.dirs.split(",") if d],
                        span=tuple(args.range), steps=args.steps, two_d=args.two_d, data_dir=args.data_dir,
                        suite=args.suite, task_suite=args.task_suite, judge=args.judge, template=args.template,
                        limit=args.limit, max_new_tokens=args.max_new_tokens, adapter=args.adapter, marks=args.mark, norm=args.norm, seed=args.seed,
                        log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    for line in doc["summary"]:
        console.print(f"- {line}")
    console.print(f"done in {doc['seconds']:.0f}s; landscape.json, {', '.join(p.split('/')[-1] for p in doc['pictures'])}, "
                  f"summary.txt in {args.out}")
    return 0
