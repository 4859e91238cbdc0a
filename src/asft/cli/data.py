"""`asft data`: build data files from the reference pools."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="build data files: safety demonstrations for SafeInstr / BEA",
                       description="Data files made from training pools in the reference format.")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    s = data_sub.add_parser(
        "safety", help="harmful requests of the training pools answered with refusals (never the HS prompts)",
        epilog="example: asft data safety --reference ../shared/data/asft-reference --n 500 --out safety.json")
    s.add_argument("--reference", metavar="DIR", help="reference data folder (train/*/*.json; eval/harmful excluded)")
    s.add_argument("--harmful", nargs="*", default=[], metavar="FILE", help="more files of harmful records")
    s.add_argument("--exclude", nargs="*", default=[], metavar="FILE", help="prompt files never to use")
    s.add_argument("--n", type=int, default=500, help="demonstrations (default 500)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, metavar="FILE")
    s.set_defaults(func=run_safety)


def run_safety(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console

    from asft.align import AlignConfig, build_examples
    from asft.fileio import write_json

    harmful, exclude = list(args.harmful), list(args.exclude)
    if args.reference:
        ref = Path(args.reference)
        harmful += sorted(str(p) for p in (ref / "train").glob("*/*.json"))
        exclude.append(str(ref / "eval" / "harmful" / "saved_dataset_250.json"))
    cfg = AlignConfig(model="", out="", harmful=harmful, exclude=exclude, n_harmful=args.n, n_benign=0,
                      benign_targets="data", seed=args.seed)
    rows, report = build_examples(cfg)
    write_json(args.out, rows)
    Console().print(f"wrote {len(rows)} safety demonstrations to {args.out} (pool {report['harmful_pool']} harmful "
                    f"requests, {report['excluded_overlap']} dropped for overlapping the excluded prompts)")
    return 0
