"""`asft merge`: fold a LoRA adapter into its model and write a plain model folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="merge a LoRA adapter into its model (writes a model folder)",
        epilog="example: asft merge --model models/llama-2-7b-chat --adapter runs/asft --out runs/asft-merged")
    p.add_argument("--model", required=True, help="model folder the adapter was trained on")
    p.add_argument("--adapter", required=True, help="adapter folder (from asft train)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights of the merged folder (auto: the model's own dtype)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.training.merge import merge

    out = merge(args.model, args.adapter, args.out, dtype=args.dtype, overwrite=args.overwrite)
    print(f"merged model written to {out}")
    return 0
