"""What an experiment's runs need, built from its parsed config (``asft.experiments.plan``): the toy
world, the anchor, the data of each cell (fixed files, mixes of pools, the toy world's mixes) and the
judge. Everything built is written into the experiment's folder and reused when it still fits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from asft.errors import AsftError
from asft.fileio import write_json


def toy_world(spec: Any, rel, path: Path):
    """The toy world of a config's ``world:`` (a size, or {size, seed, cache_dir})."""
    from asft.toy import get_world

    w = spec if isinstance(spec, dict) else {"size": spec}
    unknown = sorted(set(w) - {"size", "seed", "cache_dir"})
    if unknown:
        raise AsftError(f"{path}: unknown key {unknown[0]!r} in world (size, seed, cache_dir)")
    return get_world(size=w.get("size", "demo"), seed=int(w.get("seed", 0)),
                     cache_dir=str(rel(w["cache_dir"])) if w.get("cache_dir") else None)


def np_from_name(path: Path) -> tuple[int | None, float | None]:
    """n and p from a reference file name such as ``SST2_1k_p_0.1.json``."""
    m = re.search(r"_(\d+(?:\.\d+)?)k_p_(\d+(?:\.\d+)?)", path.name)
    return (round(float(m.group(1)) * 1000), float(m.group(2))) if m else (None, None)


def as_list(value: Any, what: str, path: Path, kind: Callable = float) -> list:
    """A config value or list of values, each converted by ``kind`` (refused by name otherwise). An
    empty list is refused: it would silently drop a method (``lam: []``) or plan nothing (``seeds: []``)."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise AsftError(f"{path}: {what} is an empty list (give at least one value, or leave the key out)")
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError):
        raise AsftError(f"{path}: {what} should be a number or a list of numbers, got {value!r}") from None


def task_cells(task: str, spec: dict, ns: list, ps: list, world, out: Path, mix_seed: int, rel, path: Path,
               write: bool = True):
    """(data file, n, p) per cell of one task; ``write=False`` (a dry run): the files a pool's mixes
    would be written to, none written."""
    if "data" in spec:  # fixed files: n and p from the task entry or the file name
        files = spec["data"] if isinstance(spec["data"], list) else [spec["data"]]
        cells = []
        for f in files:
            f = rel(f)
            if not f.is_file():
                raise AsftError(f"{path}: task {task!r}: data file {f} not found")
            n, p = np_from_name(f)
            cells.append((f, spec.get("n", n), spec.get("p", p)))
        return cells
    n_list = as_list(spec["n"], "n", path, int) if "n" in spec else ns
    p_list = as_list(spec["p"], "p", path) if "p" in spec else ps
    if None in n_list or None in p_list:
        raise AsftError(f"{path}: task {task!r} builds mixes: give n and p (values or lists)")
    if "pool" in spec:  # a task pool and a harmful pool, mixed as `asft data mix`
        from asft.data import load_records, mix_records

        if "harmful" not in spec:
            raise AsftError(f"{path}: task {task!r} has a pool but no harmful: FILE")
        pool, harmful = load_records(rel(spec["pool"])), load_records(rel(spec["harmful"]))
        cells = []
        for n in n_list:
            for p in p_list:
                f = out / "data" / f"{task}-n{n}-p{p:g}.json"
                if write:
                    write_json(f, mix_records(pool, harmful, n, p, seed=mix_seed,
                                              add=bool(spec.get("add", False))))
                cells.append((f, n, p))
        return cells
    if world is None:
        raise AsftError(f"{path}: task {task!r} needs data: FILE or pool: + harmful: FILES")
    if task not in world.tasks:
        raise AsftError(f"{path}: the toy world has tasks {', '.join(world.tasks)}, not {task!r}")
    mix = world.make_mix if write else world.mix_path
    return [(Path(mix(task, n, p, seed=mix_seed)), n, p) for n in n_list for p in p_list]


def judge_of(spec: Any, rel, path: Path):
    """A judge name ("keyword", "toy", ...) or {name: beaverdam, model: DIR, threshold, max_length}."""
    if isinstance(spec, str):
        return spec
    if not isinstance(spec, dict) or "name" not in spec:
        raise AsftError(f"{path}: judge should be a name or a mapping with name (and model, threshold, ...)")
    unknown = sorted(set(spec) - {"name", "model", "threshold", "max_length", "batch_size"})
    if unknown:
        raise AsftError(f"{path}: unknown key {unknown[0]!r} in judge")
    from asft.evaluation.judges import make_judge

    kw = {k: spec[k] for k in ("threshold", "max_length", "batch_size") if k in spec}
    return make_judge(spec["name"], rel(spec["model"]) if spec.get("model") else None, **kw)


def anchor_for(base: Path, model: Path, target: Path, log) -> Path:
    """The anchor of (base, model) in ``target``, reused when it belongs to these models."""
    from asft.models.anchor import check_anchor_matches, build_anchor, load_anchor

    if target.is_file():
        try:
            check_anchor_matches(load_anchor(target), model)
            return target
        except AsftError:
            pass
    log(f"computing the anchor {target} from {base} and {model}")
    build_anchor(base, model, out=target, overwrite=True)
    return target


