"""``asft experiment CONFIG.yaml``: a YAML file expanded into the runs of a comparison.

A config names the model (or a toy world), the anchor, the tasks and their data, sample sizes
``n``, harmful ratios ``p``, methods (with their lambda values), seeds, judge, evaluation suites and
training options (``configs/*.yaml`` are examples to copy). ``load_plan`` checks it and expands it:

    cells  = task x n x p            one Setting each (its data: a fixed file or a mix built here)
    runs   = cells x methods x seeds one RunSpec each; the aligned model once per task

Each run lives in ``OUT/runs/<task>/n<N>-p<P>/<run name>`` (the aligned model: ``OUT/runs/<task>/<its name>``)
and is skipped when done under the same settings (``asft.experiments.runs.run_one``), so a killed
experiment resumes where it stopped. ``--shard I/N`` runs every N-th unit of work (a post-hoc run
such as Safe LoRA goes with the SFT run it is computed from), so several machines sharing OUT split one experiment
without ever touching the same folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from asft.errors import AsftError
from asft.experiments.prepare import anchor_for, as_list as _list, judge_of, task_cells, toy_world
from asft.experiments.runs import RunSpec, Setting
from asft.fileio import read_yaml, write_json

KEYS = {"name", "world", "model", "base", "anchor", "eval_dir", "plugins", "judge", "template",
        "harmful_suite", "tasks", "n", "p", "seeds", "methods", "train", "eval", "safety_data",
        "proj_rank", "mix_seed", "paper", "workers"}  # and <method>: {options} for a method with options
TASK_KEYS = {"suite", "data", "pool", "harmful", "add", "n", "p"}


def _keys() -> set[str]:
    from asft.methods import all_methods

    return KEYS | {m.name for m in all_methods() if m.options}


@dataclass
class Job:
    """One run of the plan: what to run, with which settings, in which folder."""

    spec: RunSpec
    setting: Setting
    parent: Path  # the run's folder is parent / spec.name

    @property
    def folder(self) -> Path:
        return self.parent / self.spec.name


@dataclass
class Plan:
    name: str
    jobs: list[Job]
    config: dict = field(default_factory=dict)

    def units(self) -> list[list[Job]]:
        """Jobs grouped into units of work: a Safe LoRA run shares a unit with its SFT run."""
        units: dict[tuple, list[Job]] = {}
        for job in self.jobs:
            spec = job.spec
            name = (spec.source() or spec).name
            units.setdefault((str(job.parent), name), []).append(job)
        return list(units.values())

    def shard(self, index: int, count: int) -> list[Job]:
        """The jobs of shard ``index`` (1-based) of ``count``: every count-th unit."""
        _check_shard(index, count)
        return [job for i, unit in enumerate(self.units()) if i % count == index - 1 for job in unit]


def parse_shard(text: str | None) -> tuple[int, int]:
    if not text:
        return 1, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise AsftError(f"--shard {text!r}: expected I/N, e.g. 1/2")
    index, count = int(m.group(1)), int(m.group(2))
    _check_shard(index, count)
    return index, count


def _check_shard(index: int, count: int) -> None:
    if count < 1 or not 1 <= index <= count:
        raise AsftError(f"--shard {index}/{count}: expected I/N with 1 <= I <= N")


def _methods(raw: Any, path: Path) -> list[tuple[str, float, str | None, tuple[int, ...] | None]]:
    """(method, lambda, form, seeds) for each entry: "sft", or {method: asft, lam: [1, 30], form: reference}.
    ``seeds`` (optional, a subset of the experiment's): run this entry at those seeds only, e.g. an
    expensive baseline at seed 0 beside a method at every seed; None: every seed."""
    from asft.methods import get_method

    if not isinstance(raw, list) or not raw:
        raise AsftError(f"{path}: methods should be a non-empty list")
    out = []
    for entry in raw:
        entry = {"method": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, dict) or "method" not in entry:
            raise AsftError(f"{path}: a methods entry should be a name or a mapping with 'method', got {entry!r}")
        unknown = set(entry) - {"method", "lam", "form", "seeds"}
        if unknown:
            raise AsftError(f"{path}: unknown key {sorted(unknown)[0]!r} in methods entry {entry!r}")
        try:
            method = get_method(entry["method"])
        except AsftError as e:
            raise AsftError(f"{path}: {e}") from None
        if "form" in entry and not method.forms:
            raise AsftError(f"{path}: method {method.name} takes no form")
        forms = [entry.get("form", method.forms[0])] if method.forms else [None]
        if forms[0] is not None and forms[0] not in method.forms:
            raise AsftError(f"{path}: unknown form {forms[0]!r} of method {method.name} "
                            f"(choose from {', '.join(method.forms)})")
        seeds = tuple(_list(entry["seeds"], "seeds", path, int)) if "seeds" in entry else None
        if seeds is not None and not method.fine_tunes:
            raise AsftError(f"{path}: method {method.name} does not fine-tune: it takes no seeds")
        if method.takes_lambda:
            if "lam" not in entry:
                raise AsftError(f"{path}: method {method.name} needs lam (a value or a list)")
            out += [(method.name, lam, form, seeds) for lam in _list(entry["lam"], "lam", path) for form in forms]
        else:
            if "lam" in entry:
                raise AsftError(f"{path}: method {method.name} takes no lam")
            out += [(method.name, 0.0, form, seeds) for form in forms]
    return out


def allowed_plugin(module: str, allow: Sequence[str] = ()) -> bool:
    """A config's plugin is imported only when it is the package's own (``asft.toy``) or the user named it
    on the command line (``--allow-plugin`` / ``--plugin``): a config is data, an import runs code."""
    return module.split(".")[0] == __name__.split(".")[0] or module in set(allow)


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # task names become folder names


def apply_overrides(raw: dict, assignments: Sequence[str], path: Path) -> dict:
    """``train.lr=1e-4``, ``seeds=[0]``, ``eval.limit=20`` (YAML values) set into the config's mapping."""
    from asft.training.config import canonical, parse_assignments

    seen: dict[str, str] = {}
    for key, value in parse_assignments(list(assignments)).items():
        *parents, last = key.split(".")
        if parents == ["train"]:  # train.learning_rate replaces the file's lr (one option, two names)
            last = canonical(last, f"{key}=...")
            if last in seen:
                raise AsftError(f"train option {last!r} is given twice ({seen[last]}=... and {key}=...)")
            seen[last] = key
            for other in [k for k in (raw.get("train") or {}) if canonical(str(k), str(path)) == last]:
                del raw["train"][other]
        node = raw
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            elif not isinstance(node[part], dict):
                raise AsftError(f"{key}=...: {part} in {path} is not a mapping")
            node = node[part]
        node[last] = value
    return raw


def load_plan(path: str | Path, out: str | Path, log: Callable[[str], None] = print,
              allow_plugins: Sequence[str] = (), report_to: Sequence[str] | None = None,
              overrides: Sequence[str] = (), dry_run: bool = False) -> Plan:
    """Read and check ``path``, have ``asft.experiments.prepare`` build what the runs need (toy world,
    anchor, data mixes in ``out``, the judge) and expand the grid. Relative paths in the config are
    relative to the config file. ``allow_plugins``: the modules of the config's ``plugins:`` that may be
    imported besides the package's own. ``overrides``: dotted ``KEY=VALUE`` items over the file's keys.
    The whole config, every run's training options included, is checked before anything is built; with
    ``dry_run`` nothing is (no anchor, no mixes: the plan only)."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides, path)
    from asft.methods import all_methods, get_method, load_plugins

    plugins = raw.get("plugins") or []
    if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
        raise AsftError(f"{path}: plugins should be a list of module names")
    refused = [m for m in plugins if not allowed_plugin(m, allow_plugins)]
    if refused:
        raise AsftError(f"{path}: plugin {refused[0]!r} is not imported: a config is data and an import runs code; "
                        f"name it on the command line to allow it (--allow-plugin {refused[0]})")
    load_plugins(plugins, f"{path}: plugins")  # they may register methods, judges and suites
    keys = _keys()
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise AsftError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(keys))})")
    out = Path(out).resolve()
    here = path.resolve().parent

    def rel(p: Any) -> Path:
        q = Path(str(p)).expanduser()
        return q if q.is_absolute() else here / q

    world = None
    if raw.get("world") is not None:
        world = toy_world(raw["world"], rel, path)
        model, base, eval_dir = Path(world.aligned), Path(world.base), Path(world.eval_dir)
    else:
        for key in ("model", "eval_dir"):
            if not raw.get(key):
                raise AsftError(f"{path}: {key} is required (or world: for the toy world)")
        model, eval_dir = rel(raw["model"]), rel(raw["eval_dir"])
        base = rel(raw["base"]) if raw.get("base") else None
    for name, folder in (("model", model), ("eval_dir", eval_dir)):
        if not folder.is_dir():
            raise AsftError(f"{path}: {name} {folder} is not a folder")

    methods = _methods(raw.get("methods"), path)
    names = {m for m, _, _, _ in methods}
    chosen = [m for m in all_methods() if m.name in names]
    # The anchor and the safety data are part of every run's key whenever the config provides them,
    # whichever methods this call runs: a run made by `methods=[l2]` is the one the whole config makes.
    anchor = rel(raw["anchor"]) if raw.get("anchor") else None
    need = [m.name for m in chosen if m.needs_anchor]
    build_anchor = anchor is None and base is not None  # built once everything else is checked
    if need and anchor is None and base is None:
        raise AsftError(f"{path}: methods {', '.join(need)} need anchor: FILE or base: DIR")
    if build_anchor:
        anchor = out / "anchor.safetensors"
    from asft.training.config import check_dashboards, options as train_options

    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise AsftError(f"{path}: train should be a mapping of training options, got {train!r}")
    train = train_options(train, f"{path}: train")  # checked and typed; Hugging Face names accepted
    if report_to is not None:  # --report-to: every run's dashboards (not part of a run's key)
        train["report_to"] = list(report_to)
    if train.get("report_to"):  # checked now, not at the first run's start
        check_dashboards(list(train["report_to"]))

    reserved = {"model", "data", "out", "method", "lam", "form", "seed", "anchor"}  # set per run
    bad = sorted(set(train) & reserved)
    if bad:
        raise AsftError(f"{path}: train option {bad[0]!r} is set by the experiment itself (per run)")
    safety = raw.get("safety_data")
    need = [m.name for m in chosen if m.needs_safety_data]
    make_safety = None  # the toy world's safety data: written once everything else is checked
    if need or safety is not None or world is not None:
        if safety is None and world is not None:  # the toy world supplies its own
            safety = out / "data" / "safety.json"
            make_safety = world.safety_records
        elif isinstance(safety, dict):  # {world: benign}: the control of the data anchors
            if world is None or safety != {"world": "benign"}:
                raise AsftError(f"{path}: safety_data should be a file, or {{world: benign}} with a toy world "
                                f"(its benign requests answered by the aligned model), got {safety!r}")
            safety = out / "data" / "benign.json"
            make_safety = None if safety.is_file() else world.benign_records
        if safety is None:
            raise AsftError(f"{path}: methods {', '.join(need)} need safety_data: FILE "
                            "(`asft data safety` makes one)")
        if make_safety is None and not rel(safety).is_file():  # in every run's key, whichever methods run
            raise AsftError(f"{path}: safety_data {rel(safety)}: file not found")
        train["safety_data"] = str(rel(safety))
    from asft.evaluation.run import eval_store

    ev = dict(raw.get("eval") or {})
    bad = sorted(set(ev) - {"batch_size", "limit", "max_new_tokens", "shared_cache"})
    if bad:
        raise AsftError(f"{path}: unknown eval option {bad[0]!r}")
    options = {}
    for m in all_methods():
        if m.options and raw.get(m.name) is not None:
            given = raw[m.name]
            if not isinstance(given, dict) or set(given) - set(m.options):
                raise AsftError(f"{path}: {m.name} should be a mapping of {', '.join(m.options)}, got {given!r}")
            options[m.name] = dict(given)
    seeds = _list(raw.get("seeds", [0]), "seeds", path, int)
    extra = sorted({s for *_, only in methods if only for s in only} - set(seeds))
    if extra:
        raise AsftError(f"{path}: a method's seeds {extra} are not among the experiment's seeds {seeds}")
    ns = _list(raw.get("n", [None]), "n", path, lambda v: None if v is None else int(v))
    ps = _list(raw.get("p", [None]), "p", path, lambda v: None if v is None else float(v))
    mix_seed = int(raw.get("mix_seed", 42))
    tasks = raw.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise AsftError(f"{path}: tasks should be a mapping of task names to {{suite: ..., data|pool: ...}}")

    common = dict(model=model, eval_dir=eval_dir, harmful_suite=str(raw.get("harmful_suite", "harmful")),
                  judge=judge_of(raw.get("judge", "keyword"), rel, path), anchor=anchor, train=train,
                  template=str(raw.get("template", train.get("template", "alpaca"))),
                  eval_batch_size=int(ev.get("batch_size", 64)), max_new_tokens=ev.get("max_new_tokens"),
                  eval_limit=ev.get("limit"), method_options=options,
                  proj_rank=raw.get("proj_rank"), plugins=tuple(plugins),
                  eval_store=eval_store() if ev.get("shared_cache", True) else None)
    if "template" not in train:
        train["template"] = common["template"]
    jobs: list[Job] = []
    for task, spec in tasks.items():
        if not isinstance(task, str) or not SAFE_NAME.fullmatch(task) or ".." in task:
            raise AsftError(f"{path}: task name {task!r} should be letters, digits, '.', '-' and '_' "
                            "(it names the task's folder under --out)")
        spec = spec if isinstance(spec, dict) else {"suite": spec}
        unknown = sorted(set(spec) - TASK_KEYS)
        if unknown:
            raise AsftError(f"{path}: unknown key {unknown[0]!r} in task {task!r}")
        suite = str(spec.get("suite", task))
        cells = task_cells(task, spec, ns, ps, world, out, mix_seed, rel, path, write=not dry_run)
        evaluated_once = set()
        for data, n, p in cells:
            setting = Setting(data=data, task_suite=suite, task_name=task, n=n, p=p, **common)
            parent = out / "runs" / task / f"n{n}-p{p:g}" if n is not None else out / "runs" / task / data.stem
            if not parent.resolve().is_relative_to(out):  # every run folder stays under --out
                raise AsftError(f"{path}: task {task!r} would write outside --out ({parent})")
            for method, lam, form, _ in methods:  # a method that does not fine-tune: once per task
                if not get_method(method).fine_tunes and method not in evaluated_once:
                    jobs.append(Job(RunSpec(method, lam, form), setting, out / "runs" / task))
                    evaluated_once.add(method)
            for seed in seeds:  # seed by seed: a partial experiment holds whole comparisons
                for method, lam, form, only in methods:
                    if get_method(method).fine_tunes and (only is None or seed in only):
                        jobs.append(Job(RunSpec(method, lam, form, seed), setting, parent))
    from asft.experiments.runs import train_config

    for job in jobs:  # every run's options, checked as `asft train` would, before anything is built
        if job.spec.kind.fine_tunes and not job.spec.kind.post_hoc:
            try:
                train_config(job.spec, job.setting, job.folder / "adapter").validate()
            except (AsftError, TypeError) as e:
                raise AsftError(f"{path}: run {job.spec.name}: {e}") from None
    if make_safety is not None and not dry_run:
        write_json(safety, make_safety())
    if build_anchor and not dry_run:
        anchor_for(base, model, anchor, log)
    config = {"file": str(path), **raw, **({"overrides": list(overrides)} if overrides else {})}
    if any(m.needs_safety_data for m in chosen) and eval_dir is not None:
        # a safety anchor must never be built from the prompts it is scored on: say how many it shares
        from asft.data import load_records, prompt_overlap
        from asft.evaluation.suites import load_suite

        config["safety_overlap"] = prompt_overlap(load_records(train["safety_data"]),
                                                  load_suite(common["harmful_suite"], eval_dir))
        log(f"safety data {train['safety_data']}: {config['safety_overlap']} of its prompts are among the "
            f"{common['harmful_suite']} evaluation prompts (normalised text)")
    if raw.get("paper"):
        config["paper"] = str(rel(raw["paper"]))
    return Plan(name=str(raw.get("name", path.stem)), jobs=jobs, config=config)


def run_experiment(config: str | Path, out: str | Path, shard: str | None = None, workers: int | None = None,
                   log: Callable[[str], None] = print, on_row=None, on_plan=None,
                   allow_plugins: Sequence[str] = (), report_to: Sequence[str] | None = None,
                   overrides: Sequence[str] = ()) -> dict:
    """Run (or resume) the runs of ``config`` that belong to ``shard`` ("I/N"), then, once every run
    of the experiment has finished (all shards), write the report into ``out``.

    Returns ``{"plan": Plan, "ran": [...rows of this call...], "finished": k, "total": n, "report": doc|None}``.
    """
    import time

    from asft.experiments.runs import run_jobs, run_state
    from asft.report import collect_rows, write_report

    t0 = time.perf_counter()
    out = Path(out)
    index, count = parse_shard(shard)
    plan = load_plan(config, out, log=log, allow_plugins=allow_plugins, report_to=report_to, overrides=overrides)
    if on_plan is not None:
        on_plan(plan)
    jobs = plan.shard(index, count)
    states = [run_state(j.spec, j.setting, j.folder)[0] for j in jobs]  # what --dry-run lists
    kept, redone = states.count("done"), states.count("redo")
    log(f"{plan.name}: {len(plan.jobs)} runs" + (f", shard {index}/{count}: {len(jobs)}" if count > 1 else "")
        + (f", {kept} already done (kept)" if kept else "")
        + (f", {redone} done under another key (other model, data or settings: redone)" if redone else ""))
    workers = workers or int(plan.config.get("workers") or 1)
    rows = run_jobs([(j.spec, j.setting, j.parent) for j in jobs], on_row=on_row, workers=workers)
    finished = sum((j.folder / "row.json").is_file() for j in plan.jobs)
    report = None
    if finished == len(plan.jobs):
        report = write_report(collect_rows([out / "runs"]), out, paper=plan.config.get("paper"),
                              title=plan.name, config=plan.config)
    else:
        log(f"{finished} of {len(plan.jobs)} runs finished: the report is written when every shard is done "
            f"(or run `asft report {out / 'runs'} --out DIR` for what is there)")
    return {"plan": plan, "ran": rows, "finished": finished, "total": len(plan.jobs), "report": report,
            "seconds": round(time.perf_counter() - t0, 1)}
