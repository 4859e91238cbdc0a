"""`asft data`: build data files from the reference pools."""

from __future__ import annotations

import argparse

from asft.cli import at_least


def register(sub: argparse._SubParsersAction) -> None:
    from asft.data import TEMPLATES

    p = sub.add_parser("data", help="build data files: safety demonstrations for SafeInstr / BEA",
                       description="Data files made from training pools in the reference format.",
        epilog="example: asft data mix --task pool.json --harmful harmful.json --n 1000 --p 0.1 --out mix.json\n"
               "         asft data inspect mix.json --tokenizer models/llama-2-7b-chat")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    data_sub.required = True
    s = data_sub.add_parser(
        "safety", help="harmful requests of the training pools answered with refusals (never the HS prompts)",
        epilog="example: asft data safety --reference ../shared/data/asft-reference --n 500 --out safety.json")
    s.add_argument("--reference", metavar="DIR", help="reference data folder (train/*/*.json; eval/harmful excluded)")
    s.add_argument("--harmful", nargs="*", default=[], metavar="FILE", help="more files of harmful records")
    s.add_argument("--exclude", nargs="*", default=[], metavar="FILE", help="prompt files never to use")
    s.add_argument("--n", type=at_least(1), default=500, help="demonstrations (default 500)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    s.add_argument("--out", required=True, metavar="FILE", help="JSON file of the demonstrations")
    s.set_defaults(func=run_safety)

    m = data_sub.add_parser(
        "mix", help="N task records with a harmful ratio P (the paper's mixes) from any pools",
        epilog="example: asft data mix --task agnews_pool.json --harmful beavertails.json --n 1000 --p 0.1 "
               "--add-harmful --out agnews_1k_p_0.1.json")
    m.add_argument("--task", required=True, nargs="+", metavar="FILE", help="task pools (harmful records skipped)")
    m.add_argument("--harmful", required=True, nargs="+", metavar="FILE",
                   help="harmful pools: records marked harmful (instruction ends with \\n\\nAssistant:), or all")
    m.add_argument("--n", type=int, required=True, help="records in the mix")
    m.add_argument("--p", type=float, required=True, help="harmful share of them, 0 <= p <= 1")
    m.add_argument("--add-harmful", action="store_true",
                   help="N task records plus round(N*P) harmful (reference AG News: 1100); default: harmful "
                        "records replace task ones (reference SST-2, GSM8K, Alpaca: 1000)")
    m.add_argument("--seed", type=int, default=42, help="seed of the draw (default 42, the reference mixes')")
    m.add_argument("--out", required=True, metavar="FILE", help="JSON file of the mix")
    m.set_defaults(func=run_mix)

    i = data_sub.add_parser("inspect", help="counts, harmful ratio, token lengths, duplicates of a data file",
                            epilog="example: asft data inspect agnews_1k_p_0.1.json --tokenizer models/smollm2")
    i.add_argument("file", metavar="FILE", help="JSON / JSONL records")
    i.add_argument("--tokenizer", metavar="DIR", help="model folder whose tokenizer measures lengths")
    i.add_argument("--template", default="alpaca", choices=TEMPLATES, help="prompt format used to count tokens (default alpaca)")
    i.set_defaults(func=run_inspect)


def run_safety(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.training.align import AlignConfig, build_examples, reference_files
    from asft.fileio import write_json

    harmful, exclude = list(args.harmful), list(args.exclude)
    if args.reference:
        h, _, e = reference_files(args.reference)
        harmful, exclude = harmful + h, exclude + e
    cfg = AlignConfig(model="", out="", harmful=harmful, exclude=exclude, n_harmful=args.n, n_benign=0,
                      benign_targets="data", seed=args.seed)
    rows, report = build_examples(cfg)
    write_json(args.out, rows)
    make_console().print(f"wrote {len(rows)} safety demonstrations to {args.out} (pool {report['harmful_pool']} harmful "
                    f"requests, {report['excluded_overlap']} dropped for overlapping the excluded prompts)")
    return 0


def run_mix(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.training.align import split_pools
    from asft.data import load_records, mix_records
    from asft.errors import AsftError
    from asft.fileio import write_json

    if not 0.0 <= args.p <= 1.0 or args.n < 1:
        raise AsftError(f"need n >= 1 and 0 <= p <= 1 (got n={args.n}, p={args.p})")
    _, task = split_pools(args.task)
    marked, _ = split_pools(args.harmful)
    harmful = marked or [r for f in args.harmful for r in load_records(f)]
    rows = mix_records(task, harmful, args.n, args.p, seed=args.seed, add=args.add_harmful)
    write_json(args.out, rows)
    n_harm = round(args.n * args.p)
    make_console().print(f"wrote {len(rows)} records ({n_harm} harmful, {len(rows) - n_harm} task) to {args.out}")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.data import inspect_records, load_records

    records = load_records(args.file)
    tok = None
    if args.tokenizer:
        from asft.models.modeling import load_tokenizer

        tok = load_tokenizer(args.tokenizer)
    st = inspect_records(records, tok, args.template)
    console = make_console()
    console.print(f"{args.file}: {st['records']} records, {st['harmful']} harmful (p = {st['harmful_ratio']:.3f}), "
                  f"{st['with_input']} with an input; {st['duplicate_records']} duplicate records, "
                  f"{st['duplicate_requests']} repeated requests")
    if "tokens" in st:
        t = st["tokens"]
        console.print(f"tokens per example ({args.template} template): p50 {t['p50']}, p90 {t['p90']}, "
                      f"p99 {t['p99']}, max {t['max']}")
    return 0
