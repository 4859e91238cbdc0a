"""`asft train`: LoRA fine-tuning with the AsFT penalty (or sft / the l2 control)."""

from __future__ import annotations

import argparse
import dataclasses


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def register(sub: argparse._SubParsersAction) -> None:
    from asft.data import TEMPLATES
    from asft.methods import all_methods, method_names
    from asft.training.config import ALIASES, TrainConfig

    aliases: dict[str, list[str]] = {}
    for hf, ours in ALIASES.items():  # --learning-rate for --lr (switches and "-r" only as KEY=VALUE)
        if len(hf) > 1 and not isinstance(getattr(TrainConfig(), ours), bool):
            aliases.setdefault(ours, []).append(_flag(hf))
    trainable = [m for m in all_methods() if m.name in method_names(trainable=True)]
    choices = {"method": [m.name for m in trainable], "template": list(TEMPLATES),
               "form": sorted({f for m in trainable for f in m.forms})}
    methods_help = "; ".join(f"{m.name}: {m.help}" for m in trainable)

    p = sub.add_parser(
        "train", help="fine-tune an aligned model with LoRA (any registered method: sft, asft, the l2 control, ...)",
        description="Fine-tune an aligned model with LoRA. Defaults are the AsFT reference code's; "
                    "flags and KEY=VALUE override a --config YAML file, which overrides the defaults. "
                    "Hugging Face names work too: learning_rate=1e-4, num_train_epochs=3, "
                    "per_device_train_batch_size=4, output_dir=..., model_name_or_path=... (also as flags).",
        epilog="example: asft train --model models/llama-2-7b-chat --data agnews_1k_p_0.1.json --method asft \\\n"
               "             --anchor anchor.safetensors --lam 1 --out runs/asft\n"
               "         asft train --config my.yaml lam=10 learning_rate=1e-4 output_dir=runs/lam10",
    )
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE",
                   help="options as KEY=VALUE (the names of the flags or of the --config file, or their "
                        "Hugging Face names); a value is read as YAML")
    p.add_argument("--config", help="YAML file of options (keys as the long flags, with underscores, or "
                                    "their Hugging Face names)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("progress",):
            continue
        default = getattr(defaults, f.name)
        shown = "" if default in ("", None, []) else f" (default: {default})"  # required or unset: no "(default: )"
        help = f"{f.metadata['help']}{shown}"
        if f.name == "method":
            help = f"{methods_help}{shown}"
        if f.name == "fsdp":  # which methods can, from the registry
            help = (f"{f.metadata['help'].split(' (methods')[0]} (methods: "
                    f"{', '.join(m.name for m in trainable if m.fsdp is True)})")
        # Flags default to None so that a --config file can supply what the command line omits.
        flags = [_flag(f.name), *aliases.get(f.name, [])]
        if isinstance(default, bool):
            p.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=help)
        elif isinstance(default, list):
            p.add_argument(*flags, dest=f.name, type=lambda s: [t for t in s.split(",") if t], default=None,
                           help=f"{f.metadata['help']}, comma-separated"
                                + (f" (default: {','.join(default)})" if default else ""))
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            p.add_argument(*flags, dest=f.name, type=kind, default=None, help=help, choices=choices.get(f.name))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run, assignments_dest="assignments")


def run(args: argparse.Namespace) -> int:
    from asft.cli import console as make_console

    from asft.errors import AsftError
    from asft.training.config import TrainConfig, options, parse_assignments
    from asft.training.train import train

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.name != "progress"}
    for key, value in options(parse_assignments(args.assignments), "asft train").items():
        if overrides.get(key) is not None:
            raise AsftError(f"{key} is given twice: as {_flag(key)} and as {key}=...")
        overrides[key] = value
    overrides["progress"] = not args.quiet
    if args.config:
        cfg = TrainConfig.from_yaml(args.config, **overrides)
    else:
        cfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    for key in ("model", "data", "out"):
        if not getattr(cfg, key):
            raise AsftError(f"--{key} is required (on the command line or in --config)")
    res = train(cfg)
    import os

    if int(os.environ.get("RANK", "0")) != 0:  # one report per launch, from rank 0 (which wrote the adapter)
        return 0
    console = make_console()
    console.print(f"[bold]{cfg.method}[/] done: {res.steps} steps in {res.seconds:.1f}s, "
                  f"task loss {res.task_loss:.4f}, penalty {res.penalty:.4f}; "
                  f"{res.n_truncated} of {res.n_examples + res.n_dropped} examples truncated to "
                  f"{cfg.max_length} tokens")
    if res.n_dropped:
        console.print(f"[yellow]{res.n_dropped} examples left out: their prompt alone is longer than "
                      f"--max-length {cfg.max_length}[/]")
    if res.c_max_eig:
        top = max(res.c_max_eig.values())
        console.print(f"largest eigenvalue of C over modules: {top:.3g}"
                      + (" (small: the penalty acts almost like the l2 control)" if top < 0.5 else ""))
    console.print(f"adapter, config.yaml and train_log.jsonl in {res.out}")
    return 0
