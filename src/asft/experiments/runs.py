"""Grids of fine-tuning runs (method x lambda x form x seed), each trained then evaluated.

Runs are resumable: a run whose adapter and evaluation exist in its folder is read back, not redone,
so an interrupted grid loses at most the run in progress. Rows follow the result-file format of
``docs/architecture.md``: ``method``, ``lambda``, ``form``, ``task``, ``hs``, ``fa`` (percentages).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from asft.errors import AsftError
from asft.fileio import content_hash, read_json, write_json, write_text

METHODS = ("aligned", "sft", "asft", "l2", "safelora", "safeinstr", "bea", "lisa")


@dataclass(frozen=True)
class RunSpec:
    """One run. ``safelora`` is Safe LoRA applied to the ``sft`` run of the same seed."""

    method: str
    lam: float = 0.0
    form: str | None = None  # asft: reference | projector
    seed: int = 0

    @property
    def group(self) -> str:
        """Name shared by the seeds of one setting, e.g. ``asft-reference-lam30``."""
        parts = [self.method]
        if self.method == "asft":
            parts.append(self.form or "reference")
        if self.method in ("asft", "l2"):
            parts.append(f"lam{self.lam:g}")
        return "-".join(parts)

    @property
    def name(self) -> str:
        return self.group if self.method == "aligned" else f"{self.group}-s{self.seed}"


@dataclass
class Setting:
    """What all runs of a grid share: model, anchor, data, evaluation and training options."""

    model: Path                      # aligned model folder
    data: Path                       # training records
    eval_dir: Path                   # folder of the evaluation suites' files
    harmful_suite: str               # e.g. "harmful" or "toy-harmful"
    task_suite: str                  # e.g. "agnews" or "toy-topic"
    judge: Any                       # a Judge or a judge name (asft.evaluation.judges.make_judge)
    anchor: Path | None = None
    train: dict = field(default_factory=dict)  # TrainConfig overrides (lr, epochs, template, ...)
    template: str = "alpaca"
    eval_batch_size: int = 64
    max_new_tokens: int | None = None
    eval_limit: int | None = None
    safelora_select: str = "number"  # Safe LoRA selection, as its authors' code (asft.methods.safelora.select)
    safelora_num: int | None = None
    safelora_threshold: float = 0.5
    proj_rank: int | None = None     # k of the projector form
    plugins: tuple[str, ...] = ()    # modules that register the suites / judge named here ("asft.toy")
    task_name: str | None = None     # the task's name in tables (default: the task suite's)
    n: int | None = None             # sample size and harmful ratio of ``data``: labels for the
    p: float | None = None           # report (the data's content is in the key)
    eval_store: Path | None = None   # shared store of finished evaluations (asft.evaluation.run.eval_store)

    @property
    def task(self) -> str:
        return self.task_name or self.task_suite.removeprefix("toy-")

    def key(self, eval_only: bool = False) -> str:
        """Identity of everything a run's result depends on besides its RunSpec: a run folder
        made under another key (other model, data, anchor or options) is redone, not reused.
        ``eval_only``: what an evaluation of the model itself depends on (method ``aligned``).
        Computed once per Setting (hashing a real model's weights takes seconds)."""
        memo = self.__dict__.setdefault("_keys", {})
        if eval_only not in memo:
            memo[eval_only] = self._key(eval_only)
        return memo[eval_only]

    def _key(self, eval_only: bool) -> str:
        from asft.models.checkpoints import fingerprint
        from asft.runtime import result_key

        judge = self.judge if isinstance(self.judge, str) else self.judge.describe()
        ident = {"model": fingerprint(self.model),
                 "eval": [self.harmful_suite, self.task_suite, content_hash(Path(self.eval_dir))],
                 "env": result_key(), "judge": judge, "template": self.template,
                 "max_new_tokens": self.max_new_tokens, "eval_limit": self.eval_limit}
        if not eval_only:
            safety = self.train.get("safety_data")
            ident.update({"data": content_hash(Path(self.data)),
                          "anchor": content_hash(Path(self.anchor)) if self.anchor else None,
                          "train": self.train, "safety": content_hash(Path(safety)) if safety else None,
                          "safelora": [self.safelora_select, self.safelora_num, self.safelora_threshold],
                          "proj_rank": self.proj_rank})
        return content_hash(ident)


def train_run(spec: RunSpec, setting: Setting, run_dir: Path, key: str | None = None) -> Path | None:
    """Train (or reuse) the adapter of ``spec``; returns its folder (None for ``aligned``)."""
    from asft.training.train import TrainConfig, train

    adapter = run_dir / "adapter"
    if spec.method == "aligned":
        return None
    if (adapter / "train_summary.json").is_file() or (adapter / "safelora.json").is_file():
        return adapter
    if spec.method == "safelora":
        from asft.methods.safelora import safelora_adapter

        sft_spec = RunSpec("sft", seed=spec.seed)
        run_one(sft_spec, setting, run_dir.parent, key=key)  # reused when already done
        sft = run_dir.parent / sft_spec.name / "adapter"
        safelora_adapter(setting.model, sft, setting.anchor, adapter, mode=setting.safelora_select,
                         threshold=setting.safelora_threshold, num=setting.safelora_num, overwrite=True)
        return adapter
    cfg = TrainConfig(**{**setting.train, "model": str(setting.model), "data": str(setting.data),
                         "out": str(adapter), "method": spec.method, "lam": spec.lam,
                         "form": spec.form or "reference", "seed": spec.seed, "overwrite": True,
                         "anchor": str(setting.anchor) if setting.anchor else None,
                         "proj_rank": setting.proj_rank if spec.form == "projector" else None})
    train(cfg)
    return adapter


def evaluate_run(spec: RunSpec, setting: Setting, run_dir: Path, adapter: Path | None,
                 progress: bool = False) -> dict:
    """HS and FA of a run: ``asft eval --adapter A --merge`` (cached in ``run_dir/eval`` and the shared
    store; the model is loaded only if some suite is not cached)."""
    from asft.evaluation.run import run_eval

    res = run_eval(setting.model, [setting.harmful_suite, setting.task_suite], setting.eval_dir, run_dir / "eval",
                   judge=setting.judge, adapter=adapter, merge=adapter is not None, template=setting.template,
                   batch_size=setting.eval_batch_size, max_new_tokens=setting.max_new_tokens,
                   limit=setting.eval_limit, progress=progress, store=setting.eval_store)
    return {"hs": res[setting.harmful_suite].hs, "fa": res[setting.task_suite].fa}


def run_one(spec: RunSpec, setting: Setting, out_dir: Path, progress: bool = False,
            key: str | None = None) -> dict:
    """Train + evaluate one run; returns its result row (also saved as ``row.json``).

    ``run_dir/key.txt`` records ``setting.key()``: a folder made under another key is cleared."""
    import importlib

    for module in setting.plugins:  # also in a worker process, which starts with nothing imported
        importlib.import_module(module)
    run_dir = Path(out_dir) / spec.name
    key = key or setting.key(eval_only=spec.method == "aligned")
    key_path, row_path = run_dir / "key.txt", run_dir / "row.json"
    if run_dir.exists() and (not key_path.is_file() or key_path.read_text().strip() != key):
        shutil.rmtree(run_dir)
    if row_path.is_file():
        return read_json(row_path)
    resumed = (run_dir / "eval").is_dir()  # then eval_seconds is the rest of the evaluation only
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(key_path, key + "\n")
    t0 = time.perf_counter()
    adapter = train_run(spec, setting, run_dir, key)
    t1 = time.perf_counter()
    metrics = evaluate_run(spec, setting, run_dir, adapter, progress=progress)
    row = {"method": spec.method, "lambda": spec.lam if spec.method in ("asft", "l2") else 0,
           "form": spec.form if spec.method == "asft" else None, "task": setting.task,
           **({"n": setting.n, "p": setting.p} if spec.method != "aligned" and setting.n is not None else {}),
           **metrics, "seed": spec.seed, "group": spec.group,
           "train_seconds": round(t1 - t0, 2), "eval_seconds": round(time.perf_counter() - t1, 2),
           **({"eval_resumed": True} if resumed else {})}
    if adapter is not None and (adapter / "train_summary.json").is_file():
        summary = read_json(adapter / "train_summary.json")
        row["task_loss"], row["penalty"] = summary["task_loss"], summary["penalty"]
        row["train_seconds"] = round(summary["seconds"], 2)  # the training's own time, also when resumed
        if summary.get("c_max_eig"):
            row["c_max_eig"] = max(summary["c_max_eig"].values())
    write_json(row_path, row)
    return row


def run_grid(specs: Sequence[RunSpec], setting: Setting, out_dir: str | Path,
             on_row: Callable[[RunSpec, dict], None] | None = None, workers: int = 1) -> list[dict]:
    """Every run of ``specs`` with one ``setting`` (rows in the order of ``specs``), resumable."""
    if any(s.method in ("asft", "safelora") for s in specs) and setting.anchor is None:
        raise AsftError("methods asft and safelora need an anchor file")
    return run_jobs([(s, setting, Path(out_dir)) for s in specs], on_row, workers)


def run_jobs(jobs: Sequence[tuple[RunSpec, Setting, Path]],
             on_row: Callable[[RunSpec, dict], None] | None = None, workers: int = 1) -> list[dict]:
    """Run each ``(spec, setting, parent folder)`` (rows in the order of ``jobs``), resumable.

    Runs start in the order of ``jobs`` (a partial experiment holds the first comparisons whole).
    ``workers > 1`` runs that many at once in separate processes, each on one CPU thread: the
    runs are small and independent, so this uses the cores without the thread contention of
    one big process; a Safe LoRA run (which projects its seed's SFT adapter) starts once that SFT
    run is done. Results are the same with any ``workers``: every run seeds itself.
    """
    bad = next((s.method for s, _, _ in jobs if s.method not in METHODS), None)
    if bad is not None:
        raise AsftError(f"unknown method {bad!r} (choose from {', '.join(METHODS)})")
    rows: dict[int, dict] = {}
    where = {(Path(parent), s.name): i for i, (s, _, parent) in enumerate(jobs)}
    needs = {i: where.get((Path(parent), RunSpec("sft", seed=s.seed).name))
             for i, (s, _, parent) in enumerate(jobs) if s.method == "safelora"}

    def args(i: int) -> tuple:
        spec, setting, parent = jobs[i]
        return spec, setting, Path(parent), False, setting.key(eval_only=spec.method == "aligned")

    def done(i: int, row: dict) -> None:
        rows[i] = row
        if on_row is not None:
            on_row(jobs[i][0], row)

    if workers <= 1:  # a Safe LoRA run trains its SFT adapter itself if that comes later
        for i in range(len(jobs)):
            done(i, run_one(*args(i)))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding OpenMP threads
        pending, futures = list(range(len(jobs))), {}
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            while pending or futures:
                # at most `workers` runs in flight, the next in plan order whose SFT run (for Safe
                # LoRA: two processes must not train the same adapter) is done
                while len(futures) < workers:
                    i = next((i for i in pending if needs.get(i) is None or needs[i] in rows), None)
                    if i is None:
                        break
                    pending.remove(i)
                    futures[pool.submit(run_one, *args(i))] = i
                finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done(futures.pop(fut), fut.result())
    return [rows[i] for i in range(len(jobs))]


def _worker_init() -> None:
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.disable_progress_bar()


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """One row per setting (method, lambda, form, task, n, p): mean and std of hs and fa over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["group"], r["task"], r.get("n"), r.get("p")), []).append(r)
    out = []
    for (_, task, n, p), rs in groups.items():
        hs, hs_std = _mean_std([r["hs"] for r in rs])
        fa, fa_std = _mean_std([r["fa"] for r in rs])
        first = rs[0]
        row = {"method": first["method"], "lambda": first["lambda"], "form": first["form"], "task": task,
               "hs": round(hs, 2), "hs_std": round(hs_std, 2), "fa": round(fa, 2), "fa_std": round(fa_std, 2),
               "seeds": sorted(r["seed"] for r in rs), "group": first["group"]}
        if n is not None:
            row.update(n=n, p=p)
        if all("hs_rejudged" in r for r in rs):  # a second judge's HS (asft report --rejudge)
            again, again_std = _mean_std([r["hs_rejudged"] for r in rs])
            row.update(hs_rejudged=round(again, 2), hs_rejudged_std=round(again_std, 2))
        eig = [r["c_max_eig"] for r in rs if "c_max_eig" in r]
        if eig:
            row["c_max_eig"] = round(statistics.fmean(eig), 4)
        out.append(row)
    return out


def results_document(config: dict, rows: Sequence[dict], runs: Sequence[dict] | None = None) -> dict:
    """The versioned ``results.json`` document."""
    doc = {"version": 1, "config": config, "rows": list(rows)}
    if runs is not None:
        doc["runs"] = list(runs)
    return doc


def spec_from_dict(d: dict) -> RunSpec:
    names = {f.name for f in dataclasses.fields(RunSpec)}
    return RunSpec(**{k: v for k, v in d.items() if k in names})
