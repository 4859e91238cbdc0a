"""`asft demo`: the whole AsFT story on the embedded toy world, with no downloads.

1. build (or reuse) the toy world: a pre-trained base model that complies with harmful requests and
   an aligned model made from it by full fine-tuning that refuses them;
2. compute the anchor V = aligned - base (q_proj, v_proj);
3. fine-tune the aligned model with LoRA on a topic-classification mix with 10% harmful samples:
   SFT, AsFT (both forms of C) and the l2 control at the paper's lambda = 1 and at the lambda where
   the trade-off bites in this world, then Safe LoRA on the SFT adapter;
4. evaluate harmful score (held-out harmful prompts, exact judge) and task accuracy for each;
5. write results.json, results.md and chart.png to the output folder and print the table.
"""

from __future__ import annotations

import time
from pathlib import Path

from asft.errors import AsftError
from asft.experiment import RunSpec, Setting, aggregate, results_document, run_grid
from asft.fileio import write_json, write_text

# Toy fine-tuning recipe. The reference defaults (lr 5e-5, 10 epochs, batch 8) are tuned for 7B
# models on 1k samples; the toy model (under 1M parameters) fits the task in a few epochs at a
# larger learning rate. Same LoRA shape as the paper (r 8, alpha 32, q_proj/v_proj, dropout 0.05).
TOY_RECIPE = dict(lr=1e-3, epochs=3, batch_size=16, lr_gamma=0.85, max_length=128, template="chat",
                  logging_steps=20, progress=False)
TOY_MIX = dict(task="topic", n=1000, p=0.1)
PAPER_LAMBDA = 1.0
# Where the trade-off bites in the toy world, chosen once from benchmarks/toy_tradeoff.py (3 seeds):
# at lambda = 30 the safelora form and the l2 control cut HS from ~100% to ~35% with FA >= 97%; at 100
# FA falls to 80-87%, from 300 on the update is held at zero (the model stays the aligned one).
BITE_LAMBDA = 30.0
PROJ_RANK = 8


def demo_specs(lam_bite: float = BITE_LAMBDA, seed: int = 0) -> list[RunSpec]:
    specs = [RunSpec("aligned"), RunSpec("sft", seed=seed)]
    for lam in (PAPER_LAMBDA, lam_bite):
        specs += [RunSpec("asft", lam, "safelora", seed), RunSpec("asft", lam, "projector", seed),
                  RunSpec("l2", lam, seed=seed)]
    specs.append(RunSpec("safelora", seed=seed))
    return specs


def toy_setting(world, anchor: Path, data: Path, task: str = TOY_MIX["task"]) -> Setting:
    return Setting(model=Path(world.aligned), data=data, eval_dir=Path(world.eval_dir),
                   harmful_suite="toy-harmful", task_suite=f"toy-{task}", judge="toy", anchor=anchor,
                   train=dict(TOY_RECIPE), template="chat", eval_batch_size=128, proj_rank=PROJ_RANK)


def prepare(out: Path, size: str = "demo", seed: int = 0, cache_dir: str | None = None, log=print,
            mix: dict | None = None, progress: bool = False):
    """World, anchor file and training mix for a toy experiment in ``out``."""
    from asft.anchor import check_anchor_matches, compute_anchor, load_anchor
    from asft.toy import get_world

    t0 = time.perf_counter()
    world = get_world(size=size, seed=seed, cache_dir=cache_dir, progress=progress)
    log(f"toy world ready in {time.perf_counter() - t0:.1f}s: {world.root}")
    anchor = out / "anchor.safetensors"
    try:  # reuse the anchor of an earlier run only if it belongs to this world's models
        check_anchor_matches(load_anchor(anchor), world.aligned)
    except AsftError:
        compute_anchor(world.base, world.aligned, out=anchor, overwrite=True)
    mix = mix or TOY_MIX
    data = Path(world.make_mix(mix["task"], mix["n"], mix["p"]))
    return world, anchor, data


def run_demo(out: str | Path, size: str = "demo", seed: int = 0, cache_dir: str | None = None,
             lam_bite: float = BITE_LAMBDA, log=print, mix: dict | None = None,
             specs: list[RunSpec] | None = None) -> dict:
    """Run the demo into ``out``; returns the results document. ``mix`` and ``specs`` override
    the training mix and the list of runs (the tests use a smaller demo)."""
    from rich.progress import Progress

    from asft.report import bar_chart, markdown_table

    from transformers.utils import logging as hf_logging

    from asft.modeling import set_cpu_threads

    hf_logging.disable_progress_bar()  # one bar per phase, not one per model load
    set_cpu_threads()  # tiny models: extra threads on a busy machine only add contention
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    mix = mix or TOY_MIX
    world, anchor, data = prepare(out, size, seed, cache_dir, log, mix, progress=True)
    setting = toy_setting(world, anchor, data, mix["task"])
    specs = specs or demo_specs(lam_bite, seed)
    with Progress(transient=True) as bar:
        task = bar.add_task("fine-tune + evaluate", total=len(specs))
        rows = run_grid(specs, setting, out / "runs",
                        on_row=lambda spec, row: bar.update(task, advance=1, description=spec.name))
    table = aggregate(rows)
    config = {"world": str(world.root), "size": size, "seed": seed, "mix": mix, "recipe": TOY_RECIPE,
              "paper_lambda": PAPER_LAMBDA, "bite_lambda": lam_bite, "proj_rank": PROJ_RANK,
              "judge": "toy (exact)", "seconds": round(time.perf_counter() - t_start, 1)}
    doc = results_document(config, table, runs=rows)
    write_json(out / "results.json", doc)
    md = (f"# asft demo (toy world, seed {seed})\n\nTask: {mix['task']} classification, "
          f"{mix['n']} samples with harmful ratio p = {mix['p']}. HS: % of held-out harmful "
          f"prompts answered harmfully (exact judge). FA: task accuracy on held-out examples.\n\n"
          + markdown_table(table))
    write_text(out / "results.md", md)
    bar_chart(table, out / "chart.png", title=f"asft demo: toy world, p = {mix['p']}")
    return doc
