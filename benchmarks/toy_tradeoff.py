"""Does the anchor beat plain shrinkage? HS-vs-FA trade-off on the toy world over a lambda sweep.

`asft demo` runs the core of this (lambda 1-100, 3 seeds); this script extends it: more lambdas
(300, 1000), other projector ranks (--proj-rank), more seeds.

AsFT with both forms of C (reference: V V^T / ||V||_F; projector: top-k left singular vectors of V)
and the l2 control (C = 0), at each lambda, over several training seeds, plus SFT, Safe LoRA and the
aligned model. Same world, data, recipe and judge as `asft demo`. Prints a table, writes JSON
(results.json format) and an HS-vs-FA plot. Resumable: finished runs are read back.

    python benchmarks/toy_tradeoff.py [--lambdas 1 10 30 100 300] [--seeds 0 1 2] [--out runs/tradeoff]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.experiments.demo import PROJ_RANK, TOY_MIX, TOY_RECIPE, prepare, toy_setting  # noqa: E402
from asft.experiments.runs import RunSpec, aggregate, results_document, run_grid  # noqa: E402
from asft.report.tables import sort_key  # noqa: E402
from asft.fileio import write_json, write_text  # noqa: E402
from asft.runtime import usable_cores  # noqa: E402
from asft.report import markdown_table, tradeoff_chart  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1, 10, 30, 100, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--forms", nargs="+", default=["reference", "projector"])
    ap.add_argument("--proj-rank", type=int, default=PROJ_RANK, help="k of the projector form")
    ap.add_argument("--size", default="demo")
    ap.add_argument("--out", default="runs/tradeoff", help="run folders (resumable)")
    ap.add_argument("--json", default=str(HERE / "results" / "toy_tradeoff.json"))
    ap.add_argument("--plot", default=str(HERE / "results" / "toy_tradeoff.png"))
    ap.add_argument("--workers", type=int, default=min(4, usable_cores()), help="runs at once, one thread each")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    world, anchor, data = prepare(out, size=args.size)
    setting = dataclasses.replace(toy_setting(world, anchor, data), proj_rank=args.proj_rank)
    specs = [RunSpec("aligned")]
    for seed in args.seeds:
        specs += [RunSpec("sft", seed=seed), RunSpec("safelora", seed=seed)]
        for lam in args.lambdas:
            specs += [RunSpec("asft", lam, form, seed) for form in args.forms] + [RunSpec("l2", lam, seed=seed)]
    done = [0]

    def on_row(spec, row):
        done[0] += 1
        print(f"[{done[0]}/{len(specs)}] {spec.name}: HS {row['hs']:.1f} FA {row['fa']:.1f} "
              f"({row['train_seconds']:.0f}s train, {row['eval_seconds']:.0f}s eval)", flush=True)

    rows = run_grid(specs, setting, out, on_row=on_row, workers=args.workers)
    table = aggregate(rows)
    table.sort(key=sort_key)  # the registry's table order
    config = {"size": args.size, "mix": TOY_MIX, "recipe": TOY_RECIPE, "lambdas": args.lambdas,
              "seeds": args.seeds, "forms": args.forms, "proj_rank": args.proj_rank,
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.json, results_document(config, table, runs=rows))
    tradeoff_chart(table, args.plot, title=f"toy world: HS vs FA over lambda ({len(args.seeds)} seeds, mean ± std)")
    md = markdown_table(table)
    write_text(Path(args.json).with_suffix(".md"), md)
    print()
    print(md)
    print(json.dumps({"json": args.json, "plot": args.plot, "seconds": config["seconds"]}))


if __name__ == "__main__":
    main()
