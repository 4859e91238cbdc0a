"""`asft demo`: the whole AsFT story on the embedded toy world, with no downloads.

1. build (or reuse) the toy world: a pre-trained base model that complies with harmful requests and
   an aligned model made from it by full fine-tuning that refuses them;
2. compute the anchor V = aligned - base (q_proj, v_proj);
3. fine-tune the aligned model with LoRA on a topic-classification mix with 10% harmful samples:
   SFT, AsFT (both forms of C) and the l2 control over a lambda curve, then Safe LoRA on each SFT
   adapter, three training seeds each (two runs at a time on a 2-core machine);
4. evaluate harmful score (held-out harmful prompts, exact judge) and task accuracy for each;
5. write results.json, results.md (table with spreads, and whether AsFT beats the l2 control at
   equal FA) and chart.png (HS against FA per method over lambda) and print the table;
6. draw the aligned model's safety landscape (``landscape/``): 1D along the alignment direction
   and a random orthogonal one, the plane of both with where SFT, AsFT and l2 landed.

The world is the one shipped inside the package (``asft.toy.world.SHIPPED``), so every machine
starts from the same weights.
"""

from __future__ import annotations

import time
from pathlib import Path

from asft.errors import AsftError
from asft.experiments.runs import RunSpec, Setting, aggregate, results_document, run_grid
from asft.fileio import write_json, write_text

# Toy fine-tuning recipe. The reference defaults (lr 5e-5, 10 epochs, batch 8) are tuned for 7B
# models on 1k samples; the toy model (under 1M parameters) fits the task in a few epochs at a
# larger learning rate. Same LoRA shape as the paper (r 8, alpha 32, q_proj/v_proj, dropout 0.05).
TOY_RECIPE = dict(lr=1e-3, epochs=3, batch_size=16, lr_gamma=0.85, max_length=128, template="chat",
                  logging_steps=20, progress=False)
TOY_MIX = dict(task="topic", n=1000, p=0.1)
# The lambda curve: the paper's 1, then up to where the penalty holds the update near zero in this
# world (benchmarks/toy_tradeoff.py: from 300 on HS and FA are both 0, the aligned model).
DEMO_LAMBDAS = (1.0, 10.0, 30.0, 100.0)
DEMO_SEEDS = (0, 1, 2)
PROJ_RANK = 8


def demo_specs(lambdas=DEMO_LAMBDAS, seeds=DEMO_SEEDS) -> list[RunSpec]:
    """aligned; per seed SFT and Safe LoRA; per seed and lambda AsFT (reference C and projector) and l2."""
    specs = [RunSpec("aligned")]
    for seed in seeds:
        specs += [RunSpec("sft", seed=seed), RunSpec("safelora", seed=seed)]
        for lam in lambdas:
            specs += [RunSpec("asft", lam, "reference", seed), RunSpec("asft", lam, "projector", seed),
                      RunSpec("l2", lam, seed=seed)]
    return specs


def toy_setting(world, anchor: Path, data: Path, task: str = TOY_MIX["task"]) -> Setting:
    return Setting(model=Path(world.aligned), data=data, eval_dir=Path(world.eval_dir),
                   harmful_suite="toy-harmful", task_suite=f"toy-{task}", judge="toy", anchor=anchor,
                   train=dict(TOY_RECIPE), template="chat", eval_batch_size=128, proj_rank=PROJ_RANK,
                   plugins=("asft.toy",))


def prepare(out: Path, size: str = "demo", seed: int = 0, cache_dir: str | None = None, log=print,
            mix: dict | None = None, progress: bool = False):
    """World, anchor file and training mix for a toy experiment in ``out``."""
    from asft.models.anchor import check_anchor_matches, build_anchor, load_anchor
    from asft.toy import get_world

    t0 = time.perf_counter()
    world = get_world(size=size, seed=seed, cache_dir=cache_dir, progress=progress)
    log(f"toy world ready in {time.perf_counter() - t0:.1f}s: {world.root}")
    anchor = out / "anchor.safetensors"
    try:  # reuse the anchor of an earlier run only if it belongs to this world's models
        check_anchor_matches(load_anchor(anchor), world.aligned)
    except AsftError:
        build_anchor(world.base, world.aligned, out=anchor, overwrite=True)
    mix = mix or TOY_MIX
    data = Path(world.make_mix(mix["task"], mix["n"], mix["p"]))
    return world, anchor, data


def run_demo(out: str | Path, size: str = "demo", world_seed: int = 0, seeds=DEMO_SEEDS,
             lambdas=DEMO_LAMBDAS, cache_dir: str | None = None, log=print, mix: dict | None = None,
             specs: list[RunSpec] | None = None, workers: int | None = None, landscape: bool = True) -> dict:
    """Run the demo into ``out``; returns the results document. ``mix`` and ``specs`` override
    the training mix and the list of runs (the tests use a smaller demo). ``workers``: runs at
    once, one CPU thread each (default: one per usable core, at most 4)."""
    from rich.progress import Progress
    from transformers.utils import logging as hf_logging

    from asft.report import markdown_table, tradeoff_chart, verdict
    from asft.runtime import environment, usable_cores

    hf_logging.disable_progress_bar()  # one bar per phase, not one per model load
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    mix = mix or TOY_MIX
    world, anchor, data = prepare(out, size, world_seed, cache_dir, log, mix, progress=True)
    setting = toy_setting(world, anchor, data, mix["task"])
    specs = specs or demo_specs(lambdas, seeds)
    workers = workers or min(4, usable_cores())
    with Progress(transient=True) as bar:
        task = bar.add_task("fine-tune + evaluate", total=len(specs))
        rows = run_grid(specs, setting, out / "runs", workers=workers,
                        on_row=lambda spec, row: bar.update(task, advance=1, description=spec.name))
    table = aggregate(rows)
    order = {"aligned": 0, "sft": 1, "safelora": 2, "l2": 3, "asft": 4}
    table.sort(key=lambda r: (order[r["method"]], r.get("form") or "", r["lambda"]))
    seed_list = sorted({s.seed for s in specs if s.method != "aligned"})
    config = {"world": str(world.root), "size": size, "world_seed": world_seed, "seeds": seed_list,
              "mix": mix, "recipe": TOY_RECIPE, "lambdas": list(lambdas), "proj_rank": PROJ_RANK,
              "judge": "toy (exact)", "workers": workers, "seconds": round(time.perf_counter() - t_start, 1)}
    doc = results_document(config, table, runs=rows)
    doc["env"] = {**environment(device="cpu"), "threads": 1, "workers": workers}
    doc["verdict"] = verdict(table)
    write_json(out / "results.json", doc)
    md = (f"# asft demo (toy world, {len(seed_list)} training seeds, mean ± std)\n\nTask: {mix['task']} "
          f"classification, {mix['n']} samples with harmful ratio p = {mix['p']}. HS: % of held-out "
          f"harmful prompts answered harmfully (exact judge). FA: task accuracy on held-out examples.\n\n"
          + markdown_table(table) + "\n" + "\n".join(f"- {line}" for line in doc["verdict"]) + "\n")
    write_text(out / "results.md", md)
    tradeoff_chart(table, out / "chart.png",
                   title=f"asft demo: HS vs FA over λ (toy world, p = {mix['p']}, {len(seed_list)} seeds)")
    if landscape:
        doc["landscape"] = demo_landscape(world, anchor, out, rows)
        write_json(out / "results.json", doc)
    return doc


def demo_landscape(world, anchor: Path, out: Path, runs: list[dict]) -> dict:
    """The aligned model's safety landscape: 1D along the alignment direction and a random orthogonal
    one (21 points), and the plane of both (9 x 9) with where the seed-0 adapters of SFT, AsFT and
    l2 at the largest lambda landed. Returns the summary and the pictures' paths."""
    from asft.experiments.landscape import run_landscape

    lam = max((r["lambda"] for r in runs if r["method"] == "l2"), default=None)
    marks = [out / "runs" / name / "adapter" for name in
             ("sft-s0", f"asft-reference-lam{lam:g}-s0", f"l2-lam{lam:g}-s0") if lam is not None]
    doc = run_landscape(world.aligned, anchor, out / "landscape", steps=20, two_d=True, steps_2d=8,
                        data_dir=world.eval_dir, suite="toy-harmful", judge="toy", limit=None,
                        marks=[m for m in marks if (m / "adapter_model.safetensors").is_file()])
    return {"summary": doc["summary"], "pictures": doc["pictures"], "seconds": doc["seconds"]}
