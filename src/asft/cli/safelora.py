"""`asft safelora`: the Safe LoRA baseline, a training-free projection of a trained LoRA adapter."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "safelora",
        help="Safe LoRA baseline: project a trained adapter's modules onto the alignment direction",
        description=(
            "For each LoRA module, with C = V V^T / ||V||_F from the anchor, compute the cosine "
            "similarity of the update B A and its projection C B A (rounded to 5 decimals), and replace "
            "B by C B in the modules selected as the authors' code does: the --num lowest (default "
            "mode; 10 of 64 for Llama-2-7B, the same share for other models), or every module at or "
            "below --threshold. Writes a new adapter."
        ),
        epilog="example: asft safelora --model models/llama-2-7b-chat --adapter runs/sft --anchor anchor.safetensors --out runs/safelora")
    p.add_argument("--model", required=True, metavar="DIR", help="aligned model folder the adapter was trained on")
    p.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder (from asft train)")
    p.add_argument("--anchor", required=True, metavar="FILE", help="anchor file of this model (from asft anchor)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the projected adapter and safelora.json")
    p.add_argument("--select", default="number", choices=["number", "threshold"],
                   help="number: the --num lowest-similarity modules (default, as the reference); "
                        "threshold: every module with similarity <= --threshold")
    p.add_argument("--num", type=int, metavar="K",
                   help="number mode: modules to project (default round(10/64 x modules), the reference's share)")
    p.add_argument("--threshold", type=float, metavar="T", default=0.5,
                   help="threshold mode: project modules whose similarity is <= T (default 0.5)")
    p.add_argument("--dtype", default="auto", help="model dtype: auto, float32, bfloat16 or float16")
    p.add_argument("--overwrite", action="store_true", help="replace an adapter already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console
    from rich.table import Table

    from asft.methods.safelora import default_num, safelora_adapter

    rows = safelora_adapter(args.model, args.adapter, args.anchor, args.out, mode=args.select,
                            threshold=args.threshold, num=args.num, overwrite=args.overwrite, dtype=args.dtype)
    table = Table(title=f"Safe LoRA: {args.adapter}")
    table.add_column("module", no_wrap=True, min_width=max((len(r["module"]) for r in rows), default=6))
    table.add_column("similarity", justify="right", no_wrap=True, min_width=10)
    table.add_column("projected", justify="center", no_wrap=True, min_width=9)
    table.add_column("||dW||_F", justify="right", no_wrap=True, min_width=8)
    for r in rows:
        sim = "-" if r["similarity"] is None else f"{r['similarity']:.4f}"
        norms = f"{r['norm_before']:.4g}" + (f" -> {r['norm_after']:.4g}" if r["projected"] else "")
        table.add_row(r["module"], sim, "yes" if r["projected"] else "no", norms)
    console = make_console()
    console.print(table)
    num = default_num(len(rows)) if args.num is None else args.num
    rule = f"the {num} lowest similarities" if args.select == "number" else f"similarity <= {args.threshold:g}"
    n = sum(r["projected"] for r in rows)
    console.print(f"projected {n} of {len(rows)} modules ({rule}); adapter written to {args.out} "
                  f"(rows in {args.out}/safelora.json)")
    return 0
