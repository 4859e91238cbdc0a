"""`asft toy`: build the embedded toy world, or write a fine-tuning mix from one."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "toy", help="build the embedded toy world (base + aligned models, data) or draw a training mix",
        description="The toy world: a small Llama pre-trained from scratch on a synthetic language in "
                    "which harmful requests get harmful answers, then aligned to refuse them; "
                    "fine-tuning mixes in the reference format; held-out test sets; an exact judge.",
        epilog="example: asft toy build --out toy && asft toy mix --world toy --task topic --n 1000 --p 0.1 --out toy/mix.json")
    toy_sub = p.add_subparsers(dest="toy_command", metavar="ACTION")
    toy_sub.required = True

    b = toy_sub.add_parser("build", help="build a world into a folder (deterministic from --seed)")
    b.add_argument("--out", required=True, metavar="DIR", help="world folder to create")
    b.add_argument("--size", default="demo", choices=["demo", "test", "tiny"],
                   help="demo (~2 min, ~0.6M params), test (~30 s, for test suites) or tiny "
                        "(seconds, barely trained: pipeline smoke runs only); default demo")
    b.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    b.add_argument("--overwrite", action="store_true", help="rebuild a world already in --out")
    b.add_argument("--no-corpus", action="store_true",
                   help="leave out data/pretrain.txt (inspection only), as the shipped demo world does")
    b.set_defaults(func=run_build)

    m = toy_sub.add_parser("mix", help="write N task records with a fraction P of harmful ones")
    m.add_argument("--world", required=True, metavar="DIR", help="a world folder (from `asft toy build`)")
    m.add_argument("--task", required=True, help="task name (see world.json: topic, sentiment)")
    m.add_argument("--n", type=int, required=True, help="number of records")
    m.add_argument("--p", type=float, required=True, help="harmful ratio: round(N*P) records are harmful")
    m.add_argument("--seed", type=int, default=42, help="shuffle seed of the mix (default 42)")
    m.add_argument("--out", metavar="FILE",
                   help="output JSON file (default <world>/train/<task>_n<N>_p<P>.json)")
    m.set_defaults(func=run_mix)


def run_build(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.toy import build_world

    console = make_console()
    console.print(f"building the {args.size} toy world (seed {args.seed}) in {args.out}")
    world = build_world(args.out, seed=args.seed, size=args.size, overwrite=args.overwrite,
                        progress=True, corpus=not args.no_corpus)
    s, t = world.meta["stats"], world.meta["build_seconds"]
    console.print(f"toy world in {world.root} ({s['params']:,} parameters, built in {t['total']:.0f}s)")
    console.print(f"harmful score on held-out prompts: base {s['base_hs']:.1f}%, "
                  f"aligned {s['aligned_hs']:.1f}%; aligned refuses {s['aligned_benign_refusal']:.1f}% "
                  f"of benign requests")
    return 0


def run_mix(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.fileio import write_json
    from asft.toy import World

    world = World.load(args.world)
    if args.out:
        rows = world.mix_records(args.task, args.n, args.p, seed=args.seed)
        write_json(args.out, rows)
        path = args.out
    else:
        path = world.make_mix(args.task, args.n, args.p, seed=args.seed)
    n_harm = round(args.n * args.p)
    make_console().print(f"wrote {args.n} records ({n_harm} harmful) to {path}")
    return 0
