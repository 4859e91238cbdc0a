"""`asft export-gguf`: a model folder (optionally with its LoRA adapter merged in) to one GGUF file."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from asft.models.gguf_export import DTYPES

    p = sub.add_parser(
        "export-gguf", help="write a model folder (+ its LoRA adapter, merged) as a GGUF file for llama.cpp / ollama",
        description="The way llama.cpp's convert_hf_to_gguf.py writes it: GGUF tensor names, llama's q/k "
                    "permutation, Gemma's 1 + w norms, norms in F32, the tokenizer copied from the GGUF the "
                    "folder was imported from (else written from a byte-level BPE tokenizer.json) and the "
                    "folder's chat template. Architectures: llama, gemma3.",
        epilog="example: asft export-gguf --model runs/smollm2-pair/aligned --adapter runs/asft/adapter \\\n"
               "             --out smollm2-asft.gguf --dtype q8_0\n"
               "         llama-cli -m smollm2-asft.gguf -cnv      (or: ollama create NAME -f Modelfile)")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder (the one the adapter was trained on)")
    p.add_argument("--adapter", metavar="DIR", help="a LoRA adapter to merge in first (asft train's output)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .gguf file to write")
    p.add_argument("--dtype", default="f16", choices=DTYPES,
                   help="matrices in f32, f16 or q8_0 (norms stay f32; default f16)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.models.gguf_export import export_gguf

    rec = export_gguf(args.model, args.out, adapter=args.adapter, dtype=args.dtype)
    make_console().print(f"{rec['architecture']}: {rec['tensors']} tensors in {rec['dtype']}, "
                    f"{rec['bytes'] / 1e6:.1f} MB written to {rec['file']}; tokenizer {rec['tokenizer']}")
    return 0
