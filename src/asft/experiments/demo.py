"""`asft demo`: the whole AsFT story on the embedded toy world, with no downloads.

The demo is an experiment like any other: ``demo.yaml`` (shipped beside this file) run by
``asft.experiments.plan.run_experiment`` and reported by ``asft.report.write_report``, the code of
``asft experiment`` / ``asft report``. What it does:

1. build (or reuse) the toy world: a pre-trained base model that complies with harmful requests and
   an aligned model made from it by full fine-tuning that refuses them; compute the anchor
   V = aligned - base (q_proj, v_proj);
2. fine-tune the aligned model with LoRA on a topic-classification mix with 10% harmful samples:
   SFT, AsFT (both forms of C) and the l2 control over a lambda curve, then Safe LoRA on each SFT
   adapter, three training seeds each (two runs at a time on a 2-core machine);
3. evaluate harmful score (held-out harmful prompts, exact judge) and task accuracy for each, and
   write the report (results.json / .md / .csv, plots/, report.html, the verdicts against the l2
   control and SFT);
4. draw the aligned model's safety landscape (``landscape/``): 1D along the alignment direction
   and a random orthogonal one, the plane of both with where SFT, AsFT and l2 landed.

The world is the one shipped inside the package (``asft.toy.world.SHIPPED``), so every machine
starts from the same weights. The config the demo ran is written to ``OUT/demo.yaml``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Sequence

from asft.experiments.runs import Setting
from asft.fileio import atomic_path, read_yaml, write_json

DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
_SHIPPED = read_yaml(DEMO_CONFIG)


def demo_config(size: str = "demo", world_seed: int = 0, seeds: Sequence[int] | None = None,
                lambdas: Sequence[float] | None = None, cache_dir: str | None = None, mix: dict | None = None,
                methods: list | None = None) -> dict:
    """The shipped demo config with the command line's changes: the toy world (``size``, ``world_seed``,
    ``cache_dir``), training ``seeds``, the ``lambdas`` of every method with lambda, the training
    ``mix`` (``{"task", "n", "p"}``) and the ``methods`` list (config syntax)."""
    raw = copy.deepcopy(_SHIPPED)
    raw["world"] = {"size": size, "seed": int(world_seed), **({"cache_dir": str(cache_dir)} if cache_dir else {})}
    if seeds:
        raw["seeds"] = [int(s) for s in seeds]
    if methods:
        raw["methods"] = copy.deepcopy(methods)
    if lambdas:
        for entry in raw["methods"]:
            if isinstance(entry, dict) and "lam" in entry:
                entry["lam"] = [float(lam) for lam in lambdas]
    if mix:
        raw["tasks"] = {mix["task"]: {"suite": f"toy-{mix['task']}", "n": int(mix["n"]), "p": float(mix["p"])}}
    return raw


TOY_RECIPE = {**_SHIPPED["train"], "template": _SHIPPED["template"]}  # the toy world's training recipe
TOY_MIX = {"task": next(iter(_SHIPPED["tasks"])), **{k: v for k, v in next(iter(_SHIPPED["tasks"].values())).items()
                                                      if k in ("n", "p")}}
PROJ_RANK = _SHIPPED["proj_rank"]


def toy_setting(world, anchor: Path | None, data: Path, task: str = TOY_MIX["task"]) -> Setting:
    """The demo's ``Setting`` on ``world`` (for a grid run from code: benchmarks, tests)."""
    return Setting(model=Path(world.aligned), data=data, eval_dir=Path(world.eval_dir),
                   harmful_suite=_SHIPPED["harmful_suite"], task_suite=f"toy-{task}", judge=_SHIPPED["judge"],
                   anchor=anchor, train=dict(TOY_RECIPE), template=_SHIPPED["template"],
                   eval_batch_size=_SHIPPED["eval"]["batch_size"], proj_rank=PROJ_RANK,
                   plugins=tuple(_SHIPPED["plugins"]))


def prepare(out: Path, size: str = "demo", seed: int = 0, cache_dir: str | None = None, log=print,
            mix: dict | None = None, progress: bool = False):
    """World, anchor file and training mix for a toy experiment in ``out`` (benchmarks/toy_tradeoff.py)."""
    from asft.experiments.prepare import anchor_for
    from asft.toy import get_world

    t0 = time.perf_counter()
    world = get_world(size=size, seed=seed, cache_dir=cache_dir, progress=progress)
    log(f"toy world ready in {time.perf_counter() - t0:.1f}s: {world.root}")
    # reuse the anchor of an earlier run only if it belongs to this world's models
    anchor = anchor_for(Path(world.base), Path(world.aligned), Path(out) / "anchor.safetensors", log)
    mix = mix or TOY_MIX
    data = Path(world.make_mix(mix["task"], mix["n"], mix["p"]))
    return world, anchor, data


def run_demo(out: str | Path, size: str = "demo", world_seed: int = 0, seeds: Sequence[int] | None = None,
             lambdas: Sequence[float] | None = None, cache_dir: str | None = None, log=print,
             mix: dict | None = None, methods: list | None = None, workers: int | None = None,
             landscape: bool = True) -> dict:
    """Run the demo into ``out``; returns the report's results document (plus ``env`` and
    ``landscape``). ``mix`` and ``methods`` change the training mix and the methods (the tests run a
    smaller demo). ``workers``: runs at once, one CPU thread each (default: one per usable core, at
    most 4)."""
    import yaml
    from rich.progress import Progress
    from transformers.utils import logging as hf_logging

    from asft.experiments.plan import run_experiment
    from asft.runtime import environment, usable_cores

    hf_logging.disable_progress_bar()  # one bar per phase, not one per model load
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    config = out / "demo.yaml"
    with atomic_path(config) as tmp:
        tmp.write_text(yaml.safe_dump(demo_config(size, world_seed, seeds, lambdas, cache_dir, mix, methods),
                                      sort_keys=False), encoding="utf-8")
    workers = workers or min(4, usable_cores())
    with Progress(transient=True) as bar:
        task = bar.add_task("fine-tune + evaluate", total=None)
        res = run_experiment(config, out, workers=workers, log=log,
                             on_plan=lambda plan: bar.update(task, total=len(plan.jobs)),
                             on_row=lambda spec, row: bar.update(task, advance=1, description=spec.name))
    doc = res["report"]
    doc["env"] = {**environment(device="cpu"), "threads": 1, "workers": workers}
    doc["config"]["seconds"] = round(time.perf_counter() - t_start, 1)
    doc["config"]["workers"] = workers
    if landscape:
        doc["landscape"] = demo_landscape(res["plan"], out)
        doc["config"]["seconds"] = round(time.perf_counter() - t_start, 1)
    doc.pop("plots", None)
    write_json(out / "results.json", doc)
    doc["plots"] = res["report"].get("plots", [])
    return doc


def demo_landscape(plan, out: Path) -> dict:
    """The aligned model's safety landscape: 1D along the alignment direction and a random orthogonal
    one (21 points), and the plane of both (9 x 9) with where the seed-0 adapters of SFT, AsFT and
    l2 at the largest lambda landed. Returns the summary and the pictures' paths."""
    from asft.experiments.landscape import run_landscape
    from asft.methods import control_method, plain_method

    setting = plan.jobs[0].setting
    seed0 = {job.spec.group: job.folder for job in plan.jobs if job.spec.seed == 0 and job.spec.kind.fine_tunes}
    control = control_method()
    lams = [job.spec.lam for job in plan.jobs if job.spec.method == control.name]
    marks = []
    if lams:  # SFT, the anchored method (default form) and the control, at the strongest lambda
        anchored = next(m for m in plan_methods(plan) if m.needs_anchor and m.takes_lambda)
        groups = (plain_method().group(), anchored.group(max(lams)), control.group(max(lams)))
        marks = [seed0[g] / "adapter" for g in groups if g in seed0]
    doc = run_landscape(setting.model, setting.anchor, out / "landscape", steps=20, two_d=True, steps_2d=8,
                        data_dir=setting.eval_dir, suite=setting.harmful_suite, judge=setting.judge, limit=None,
                        marks=[m for m in marks if (m / "adapter_model.safetensors").is_file()])
    return {"summary": doc["summary"], "pictures": doc["pictures"], "seconds": doc["seconds"]}


def plan_methods(plan) -> list:
    """The methods of ``plan``, each once, in plan order."""
    seen: dict = {}
    for job in plan.jobs:
        seen.setdefault(job.spec.method, job.spec.kind)
    return list(seen.values())
