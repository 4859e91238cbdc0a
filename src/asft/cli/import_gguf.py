"""`asft import-gguf`: a GGUF checkpoint (or its ordered parts) to a Hugging Face safetensors folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-gguf", help="convert a GGUF checkpoint to a Hugging Face model folder (safetensors)",
        description="Dequantises a GGUF file with transformers' reader and writes config.json, "
                    "model.safetensors, the tokenizer (with its chat template, where the GGUF has one) "
                    "and generation_config.json; the written folder is reloaded and its logits checked "
                    "against the GGUF model before it is moved into place. Several FILEs are the parts "
                    "of one chunked file, joined in the order given.",
        epilog="example: asft import-gguf SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-135m-instruct")
    p.add_argument("files", nargs="+", metavar="FILE", help="the .gguf file, or its parts in order")
    p.add_argument("--out", required=True, metavar="DIR", help="model folder to create")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="dtype of the written weights (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a folder already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.models.gguf import import_gguf

    rec = import_gguf(args.files, args.out, dtype=args.dtype, overwrite=args.overwrite)
    console = make_console()
    console.print(f"{rec['architecture']} ({rec['parameters'] / 1e6:.1f}M parameters, {rec['dtype']}) "
                  f"written to {args.out} in {rec['seconds']:.0f}s; logits match the GGUF model "
                  f"(max |diff| {rec['max_abs_logit_diff']:.2g})")
    if not rec["has_chat_template"]:
        console.print("[yellow]no chat template in this GGUF: a pre-trained model; use --template alpaca[/]")
    return 0
