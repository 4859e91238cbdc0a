"""`asft experiment`: the runs of a YAML config (methods x lambda x tasks x n x p x seeds), resumable."""

from __future__ import annotations

import argparse

from asft.cli import at_least


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "experiment", help="run a comparison from a YAML config (resumable, shardable) and report it",
        description="Expands CONFIG into runs (task x n x p x method x seed), trains and evaluates each "
                    "one that is not done yet, and writes results.json/.csv/.md, plots and report.html "
                    "to --out once all runs are finished. Copy a file of configs/ to start.",
        epilog="example: asft experiment configs/toy_paper_table.yaml --out runs/toy-table --workers 2\n"
               "         asft experiment my.yaml --out /shared/exp --shard 1/2   (and 2/2 on another machine)\n"
               "         asft experiment configs/toy_paper_table.yaml train.lr=1e-3 seeds=[0] --out runs/try --dry-run")
    p.add_argument("config", help="experiment YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config keys set over the file's, dotted for nested ones, values read as YAML: "
                        "train.lr=1e-4 seeds=[0] eval.limit=20 (Hugging Face names work in train: "
                        "train.learning_rate=1e-4)")
    p.add_argument("--out", required=True, help="output folder (runs/, data/, report files)")
    p.add_argument("--shard", metavar="I/N", help="run only shard I of N (machines sharing --out)")
    p.add_argument("--workers", type=at_least(1), help="runs at once, one CPU thread each (default: the config's, else 1)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the whole config and list the runs of this shard; builds and writes nothing")
    p.add_argument("--report-to", type=lambda s: [t for t in s.split(",") if t], metavar="LIST",
                   help="dashboards every run logs to besides its train_log.jsonl: tensorboard (each "
                        "run's adapter/tensorboard), wandb, none (default: the config's train.report_to)")
    p.add_argument("--allow-plugin", action="append", default=[], metavar="MODULE",
                   help="let the config's plugins: import MODULE (only the package's own, e.g. asft.toy, "
                        "are imported otherwise: a config is data, an import runs code); repeatable")
    p.set_defaults(func=run, assignments_dest="overrides")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asft.cli import console as make_console, print_markdown

    from asft.experiments.plan import load_plan, parse_shard, run_experiment
    from asft.experiments.runs import run_state

    console = make_console()
    allow = [*args.allow_plugin, *getattr(args, "plugin", [])]  # --plugin MODULE was imported already
    if args.dry_run:
        index, count = parse_shard(args.shard)
        plan = load_plan(args.config, args.out, log=console.print, allow_plugins=allow, overrides=args.overrides,
                         dry_run=True)
        for job in plan.shard(index, count):
            state, why = run_state(job.spec, job.setting, job.folder)
            console.print(f"{state:6} {job.folder}" + (f"  ({why})" if why else ""))
        return 0

    def on_row(spec, row):
        where = row["task"] if row.get("p") is None else f"{row['task']} n={row['n']} p={row['p']:g}"
        fa = "-" if row["fa"] is None else f"{row['fa']:.1f}"
        console.print(f"{where} {spec.name}: HS {row['hs']:.1f}  FA {fa}")

    res = run_experiment(args.config, args.out, shard=args.shard, workers=args.workers, log=console.print,
                         on_row=on_row, allow_plugins=allow, report_to=args.report_to,
                         overrides=args.overrides)
    if res["report"] is not None:
        print_markdown(Path(args.out, "results.md").read_text(encoding="utf-8"))
        plots = res["report"].get("plots") or []
        console.print(f"{res['total']} runs in {res['seconds']:.0f}s; results.json, results.csv, results.md, "
                      + (f"plots/ ({len(plots)} charts), " if plots else "") + f"report.html in {args.out}")
    return 0
