"""Grids of fine-tuning runs (method x lambda x form x seed), each trained then evaluated.

Runs are resumable: a run whose adapter and evaluation exist in its folder is read back, not redone,
so an interrupted grid loses at most the run in progress. Rows follow the result-file format of
``docs/architecture.md``: ``method``, ``lambda``, ``form``, ``task``, ``hs``, ``fa`` (percentages).
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from asft.errors import AsftError
from asft.fileio import content_hash, output_lock, read_json, write_json, write_text
from asft.report.aggregate import aggregate, results_document  # noqa: F401  (also importable from here)

POST_HOC_DONE = "post_hoc.json"  # written last into a post-hoc method's adapter folder

@dataclass(frozen=True)
class RunSpec:
    """One run of a registered method (``asft.methods``). A post-hoc method (Safe LoRA) is applied
    to the plain (SFT) run of the same seed."""

    method: str
    lam: float = 0.0
    form: str | None = None  # a method with forms (asft: reference | projector); None: its default
    seed: int = 0

    @property
    def kind(self):
        """The ``Method`` record (an unknown name is refused with the known ones)."""
        from asft.methods import get_method

        return get_method(self.method)

    @property
    def group(self) -> str:
        """Name shared by the seeds of one setting, e.g. ``asft-reference-lam30``."""
        return self.kind.group(self.lam, self.form)

    @property
    def name(self) -> str:
        return self.group if not self.kind.fine_tunes else f"{self.group}-s{self.seed}"

    def source(self) -> "RunSpec | None":
        """The run a post-hoc method is computed from: the plain method's, same seed."""
        from asft.methods import plain_method

        return RunSpec(plain_method().name, seed=self.seed) if self.kind.post_hoc else None


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
    method_options: dict = field(default_factory=dict)  # method name -> its options (Method.options)
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
        ``eval_only``: what an evaluation of the model itself depends on (the aligned method).
        Computed once per Setting (hashing a real model's weights takes seconds)."""
        memo = self.__dict__.setdefault("_keys", {})
        if eval_only not in memo:
            memo[eval_only] = self._key(eval_only)
        return memo[eval_only]

    def key_files(self, eval_only: bool = False) -> list[Path]:
        """The files and folders ``key`` hashes: it can be computed once all of them exist."""
        files = [Path(self.model), Path(self.eval_dir)]
        if not eval_only:
            safety = self.train.get("safety_data")
            files += [Path(f) for f in (self.data, self.anchor, safety) if f]
        return files

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
                          "train": {**train_defaults(), **self.train},
                          "safety": content_hash(Path(safety)) if safety else None,
                          "options": self.options_key(),
                          "proj_rank": self.proj_rank})
        return content_hash(ident)

    def options(self, method) -> dict:
        """``method``'s options: its defaults (``Method.options``) updated with this setting's."""
        return {**method.options, **self.method_options.get(method.name, {})}

    def options_key(self) -> dict:
        from asft.methods import all_methods

        return {m.name: self.options(m) for m in all_methods() if m.options}


# TrainConfig fields that name a run's own files or only change what is printed: not part of its key
NOT_IN_KEY = ("model", "data", "out", "method", "lam", "form", "seed", "anchor", "safety_data", "progress",
              "logging_steps", "save_steps", "resume", "overwrite", "report_to", "fsdp")  # fsdp: how runs are spread


def train_defaults() -> dict:
    """The TrainConfig defaults a run's result depends on: part of its key, so that a run made under
    another default (another release of asft) is redone, not reused."""
    from asft.training.config import TrainConfig

    return {k: v for k, v in TrainConfig().to_dict().items() if k not in NOT_IN_KEY}


def train_run(spec: RunSpec, setting: Setting, run_dir: Path, key: str | None = None) -> Path | None:
    """Train (or reuse) the adapter of ``spec``; returns its folder (None for the aligned model)."""
    from asft.training.train import train

    adapter = run_dir / "adapter"
    method = spec.kind
    if not method.fine_tunes:
        return None
    if (adapter / "train_summary.json").is_file() or (adapter / POST_HOC_DONE).is_file():
        return adapter
    if method.post_hoc:
        source = spec.source()
        run_one(source, setting, run_dir.parent, key=key)  # reused when already done
        method.post_hoc_adapter(setting.model, run_dir.parent / source.name / "adapter", setting.anchor, adapter,
                                **setting.options(method))
        write_json(adapter / POST_HOC_DONE, {"run": spec.name, "from": source.name, **setting.options(method)})
        return adapter
    train(train_config(spec, setting, adapter))
    return adapter


def train_config(spec: RunSpec, setting: Setting, adapter: Path):
    """The ``TrainConfig`` of a fine-tuning run (also checked by the plan before anything runs)."""
    from asft.training.config import TrainConfig

    method = spec.kind
    return TrainConfig(**{**setting.train, "model": str(setting.model), "data": str(setting.data),
                          "out": str(adapter), "method": spec.method, "lam": spec.lam,
                          "seed": spec.seed,
                          **({"form": spec.form or method.forms[0]} if method.forms else {}),
                          "anchor": str(setting.anchor) if setting.anchor else None,
                          # the projector form's k (the reference form keeps the anchor's own rank)
                          "proj_rank": setting.proj_rank if spec.form == "projector" else None})


def evaluate_run(spec: RunSpec, setting: Setting, run_dir: Path, adapter: Path | None,
                 progress: bool = False) -> dict:
    """HS and FA of a run: ``asft eval --adapter A --merge`` (cached in ``run_dir/eval`` and the shared
    store; the model is loaded only if some suite is not cached), recorded in the adapter's card."""
    from asft.evaluation.run import EvalOptions, run_eval
    from asft.training.card import record_eval
    from asft.training.train import adapter_trigger

    options = EvalOptions(judge=setting.judge, merge=adapter is not None, template=setting.template,
                          batch_size=setting.eval_batch_size, max_new_tokens=setting.max_new_tokens,
                          limit=setting.eval_limit, progress=progress, store=setting.eval_store,
                          trigger=adapter_trigger(adapter) if adapter is not None else None)
    res = run_eval(setting.model, [setting.harmful_suite, setting.task_suite], setting.eval_dir, run_dir / "eval",
                   options, adapter=adapter)
    if adapter is not None:
        record_eval(adapter, res)
    return {"hs": res[setting.harmful_suite].hs, "fa": res[setting.task_suite].fa}


def run_key(spec: RunSpec, setting: Setting) -> str:
    """The key a run folder is made under (its ``key.txt``): what its result depends on."""
    return setting.key(eval_only=not spec.kind.fine_tunes)


def made_under(run_dir: Path, key: str) -> bool:
    """``run_dir`` was made under ``key``: its files belong to these settings (otherwise it is redone)."""
    key_path = run_dir / "key.txt"
    return key_path.is_file() and key_path.read_text().strip() == key


def run_state(spec: RunSpec, setting: Setting, run_dir: Path) -> tuple[str, str]:
    """What ``asft experiment`` would do with ``run_dir`` (``--dry-run``), and why: "to do"; "done"
    (made under this key: kept); "redo" (finished under another key: another model, data, anchor or
    options); or "done?" when the key cannot be computed yet because a file it hashes is not built
    (a dry run builds neither the anchor nor the data mixes)."""
    if not (run_dir / "row.json").is_file():
        return "to do", ""
    missing = [f for f in setting.key_files(eval_only=not spec.kind.fine_tunes) if not f.exists()]
    if missing:
        return "done?", f"key unchecked: no {missing[0]}"
    if made_under(run_dir, run_key(spec, setting)):
        return "done", ""
    return "redo", "finished under another key"


def run_one(spec: RunSpec, setting: Setting, out_dir: Path, progress: bool = False,
            key: str | None = None) -> dict:
    """Train + evaluate one run; returns its result row (also saved as ``row.json``).

    ``run_dir/key.txt`` records ``setting.key()``: a folder made under another key is cleared."""
    from asft.methods import load_plugins

    load_plugins(setting.plugins, "plugins")  # also in a worker process, which starts with nothing imported
    run_dir = Path(out_dir) / spec.name
    # one writer per run: a run another worker (or another `asft experiment` on this --out) is making
    # is waited for, then found made
    with output_lock(run_dir, f"asft experiment run {spec.name}", wait=True):
        return _run_one(spec, setting, run_dir, progress, key)


def _run_one(spec: RunSpec, setting: Setting, run_dir: Path, progress: bool, key: str | None) -> dict:
    key = key or run_key(spec, setting)
    key_path, row_path = run_dir / "key.txt", run_dir / "row.json"
    if run_dir.exists() and not made_under(run_dir, key):
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
    method = spec.kind
    row = {"method": spec.method, "lambda": spec.lam if method.takes_lambda else 0,
           "form": spec.form if method.forms else None, "task": setting.task,
           **({"n": setting.n, "p": setting.p} if method.fine_tunes and setting.n is not None else {}),
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
    need = sorted({s.method for s in specs if s.kind.needs_anchor})
    if need and setting.anchor is None:
        raise AsftError(f"methods {', '.join(need)} need an anchor file")
    return run_jobs([(s, setting, Path(out_dir)) for s in specs], on_row, workers)


def run_jobs(jobs: Sequence[tuple[RunSpec, Setting, Path]],
             on_row: Callable[[RunSpec, dict], None] | None = None, workers: int = 1) -> list[dict]:
    """Run each ``(spec, setting, parent folder)`` (rows in the order of ``jobs``), resumable.

    Runs start in the order of ``jobs`` (a partial experiment holds the first comparisons whole).
    ``workers > 1`` runs that many at once in separate processes, each on one CPU thread: the
    runs are small and independent, so this uses the cores without the thread contention of
    one big process; a post-hoc run (Safe LoRA: it projects its seed's SFT adapter) starts once that
    run is done. Results are the same with any ``workers``: every run seeds itself.
    """
    from asft.methods import load_plugins

    for s, setting, _ in jobs:
        load_plugins(setting.plugins, "plugins")  # the modules that register its methods and suites
        s.kind  # an unknown method is refused before anything runs
    rows: dict[int, dict] = {}
    where = {(Path(parent), s.name): i for i, (s, _, parent) in enumerate(jobs)}
    needs = {i: where.get((Path(parent), s.source().name))
             for i, (s, _, parent) in enumerate(jobs) if s.kind.post_hoc}

    def args(i: int) -> tuple:
        spec, setting, parent = jobs[i]
        return spec, setting, Path(parent), False, run_key(spec, setting)

    def done(i: int, row: dict) -> None:
        rows[i] = row
        if on_row is not None:
            on_row(jobs[i][0], row)

    if workers <= 1:  # a post-hoc run trains its source run itself if that comes later
        for i in range(len(jobs)):
            done(i, run_one(*args(i)))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding OpenMP threads
        pending, futures = list(range(len(jobs))), {}
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
            while pending or futures:
                # at most `workers` runs in flight, the next in plan order whose source run (for a
                # post-hoc method: two processes must not train the same adapter) is done
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


def spec_from_dict(d: dict) -> RunSpec:
    names = {f.name for f in dataclasses.fields(RunSpec)}
    return RunSpec(**{k: v for k, v in d.items() if k in names})
