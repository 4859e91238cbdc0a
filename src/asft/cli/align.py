"""`asft align`: a safety-aligned version of a model (refusals + self-distilled benign answers)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from asft.data import TEMPLATES

    p = sub.add_parser(
        "align", help="make a safety-aligned version of a model by full fine-tuning (a real base/aligned pair)",
        description="Fully fine-tunes MODEL on harmful requests -> varied refusals and benign requests -> the "
                    "model's own answers (generated first), so that (MODEL, OUT) is a base/aligned pair for "
                    "`asft anchor`. Harmful requests come from training pools, never from the --exclude "
                    "prompts (the overlap is dropped and reported).",
        epilog="example: asft align --model models/smollm2-135m-instruct --reference ../shared/data/asft-reference "
               "--out models/smollm2-aligned")
    p.add_argument("--model", required=True, metavar="DIR", help="model folder to align")
    p.add_argument("--out", required=True, metavar="DIR", help="aligned model folder to create")
    p.add_argument("--reference", metavar="DIR",
                   help="the reference data folder: harmful requests from train/*/*.json, benign ones from "
                        "train/alpaca, the 250 HS prompts (eval/harmful) excluded")
    p.add_argument("--harmful", nargs="*", default=[], metavar="FILE", help="more files of harmful records")
    p.add_argument("--benign", nargs="*", default=[], metavar="FILE", help="more files of benign records")
    p.add_argument("--exclude", nargs="*", default=[], metavar="FILE", help="prompt files never to train on")
    p.add_argument("--n-harmful", type=int, default=400, help="harmful requests answered with refusals (default 400)")
    p.add_argument("--n-benign", type=int, default=400, help="benign requests answered by the model itself (default 400)")
    p.add_argument("--benign-targets", default="self", choices=["self", "data"],
                   help="self: the model's own answers (chat models); data: the pool's outputs (pre-trained models)")
    p.add_argument("--template", default="chat", choices=TEMPLATES, help="prompt format (default chat; alpaca for a model without a chat template)")
    p.add_argument("--epochs", type=float, default=2.0, help="epochs of full fine-tuning (default 2)")
    p.add_argument("--lr", type=float, default=2e-5, help="AdamW learning rate (default 2e-5)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    p.add_argument("--max-length", type=int, default=320, help="examples truncated to this many tokens (default 320)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the training order (default 0)")
    p.add_argument("--save-steps", type=int, default=50, metavar="N",
                   help="checkpoint every N steps (0: never); rerunning the same command resumes an "
                        "interrupted run from its examples and last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an aligned model already in --out")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.training.align import AlignConfig, align, reference_files

    harmful, benign, exclude = list(args.harmful), list(args.benign), list(args.exclude)
    if args.reference:
        h, b, e = reference_files(args.reference)
        harmful, benign, exclude = harmful + h, benign + b, exclude + e
    cfg = AlignConfig(model=args.model, out=args.out, harmful=harmful, benign=benign, exclude=exclude,
                      n_harmful=args.n_harmful, n_benign=args.n_benign, benign_targets=args.benign_targets,
                      template=args.template, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                      max_length=args.max_length, seed=args.seed, save_steps=args.save_steps,
                      overwrite=args.overwrite)
    rec = align(cfg)
    if rec["resumed_at"]:
        make_console().print(f"resumed at step {rec['resumed_at']} of {rec['steps']}")
    make_console().print(f"aligned model in {args.out}: {rec['harmful_used']} refusals + {rec['benign_used']} benign "
                    f"answers ({rec['benign_targets']}), {rec['steps']} steps, loss {rec['loss_first']} -> "
                    f"{rec['loss_last']}; {rec['excluded_overlap']} harmful requests dropped for overlapping "
                    f"the excluded prompts. Next: asft anchor --base {args.model} --aligned {args.out} ...")
    return 0
