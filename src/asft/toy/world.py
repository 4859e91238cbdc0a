"""Build, cache and open a toy world: tokenizer, base and aligned models, data and eval sets.

Layout of a world folder::

    world.json                 version, seed, size, tasks, labels, families, build seconds, stats
    base/  aligned/            HF model folders (config.json, model.safetensors, tokenizer files)
    data/pretrain.txt          the pre-training corpus, one document per line (for inspection)
    data/alignment.json        the alignment records (chat SFT data of the aligned model)
    train/<task>_n<N>_p<P>.json  fine-tuning mixes, written on request (``World.make_mix``)
    eval/harmful.json          held-out harmful prompts ``[{"instruction","family"}]``
    eval/<task>.json           task test sets ``[{"instruction","input","label"}]``
"""

from __future__ import annotations

import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from asft.errors import AsftError
from asft.fileio import read_json, write_json, write_text
from asft.toy import corpus as C
from asft.toy import lexicon as L
from asft.toy.pretrain import ModelShape

# Bump whenever generation or training changes what a (size, seed) world contains: cache key.
VERSION = 3
MIX_SEED = 42  # default shuffle seed of a mix (as ``asft.data.mix_records``)
# The build's float32 weights depend on the thread count and on the CPU instruction set (AVX2 and
# AVX-512 kernels sum in different orders), so every build uses one thread, and the demo world is not
# rebuilt at all: it ships inside the package (``shipped/<size>-s<seed>``, about 6 MB, made by
# ``asft toy build --size demo --seed 0 --no-corpus --out src/asft/toy/shipped/demo-s0``).
BUILD_THREADS = 1
SHIPPED = Path(__file__).resolve().parent / "shipped"


@dataclass(frozen=True)
class WorldSize:
    """Everything a world size fixes: model shape, corpus sizes, training schedules, eval sizes."""

    shape: ModelShape
    n_chat: int            # pre-training chat logs (half harmful, all compliant)
    n_wiki: int            # pre-training wiki lines
    n_raw: int             # pre-training raw task texts
    pretrain_steps: int
    pretrain_lr: float
    n_align: int           # alignment records (half refusals)
    align_steps: int
    align_lr: float
    replay_weight: float   # weight of the replayed pre-training loss during alignment
    n_task_eval: int       # test records per task
    batch_size: int = 16
    seq_len: int = 64
    default_mix: tuple[str, int, float] = ("topic", 1000, 0.1)


SIZES: dict[str, WorldSize] = {
    # asft demo and CPU benchmarks: ~0.6M parameters, under 2 minutes on one core.
    "demo": WorldSize(ModelShape(hidden=128, layers=3, intermediate=256), n_chat=6000, n_wiki=4000,
                      n_raw=4000, pretrain_steps=800, pretrain_lr=3e-3, n_align=3000,
                      align_steps=120, align_lr=1e-3, replay_weight=1.0, n_task_eval=200),
    # The test suite: ~0.16M parameters, under 30 seconds on one core, same qualitative behaviour.
    "test": WorldSize(ModelShape(hidden=64, layers=2, intermediate=128), n_chat=3000, n_wiki=2000,
                      n_raw=2000, pretrain_steps=500, pretrain_lr=5e-3, n_align=2000,
                      align_steps=100, align_lr=1e-3, replay_weight=1.0, n_task_eval=100),
    # Pipeline smoke runs only (file layout, determinism, CLI): seconds, barely trained models.
    "tiny": WorldSize(ModelShape(hidden=32, layers=1, intermediate=64), n_chat=200, n_wiki=100,
                      n_raw=100, pretrain_steps=10, pretrain_lr=5e-3, n_align=100, align_steps=5,
                      align_lr=1e-3, replay_weight=1.0, n_task_eval=20,
                      default_mix=("topic", 100, 0.1)),
}


def _rng(seed: int, stream: str) -> random.Random:
    """An independent random stream per purpose, so adding one stream never shifts another."""
    return random.Random(f"asft-toy/{seed}/{stream}")


def _fmt_p(p: float) -> str:
    return f"{p:g}"


@dataclass
class World:
    """An opened toy world folder (see the module docstring for its layout)."""

    root: Path
    meta: dict = field(repr=False)

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def aligned(self) -> Path:
        return self.root / "aligned"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    @property
    def harmful_eval(self) -> Path:
        return self.eval_dir / "harmful.json"

    @property
    def tasks(self) -> list[str]:
        return list(self.meta["tasks"])

    @property
    def seed(self) -> int:
        return int(self.meta["seed"])

    @property
    def size(self) -> str:
        return self.meta["size"]

    def labels(self, task: str) -> list[str]:
        self._check_task(task)
        return list(self.meta["labels"][task])

    def task_eval(self, task: str) -> Path:
        self._check_task(task)
        return self.eval_dir / f"{task}.json"

    def _check_task(self, task: str) -> None:
        if task not in self.meta["tasks"]:
            raise AsftError(f"{self.root}: unknown task {task!r} (choose from {', '.join(self.tasks)})")

    def mix_records(self, task: str, n: int, p: float, seed: int = MIX_SEED) -> list[dict]:
        """``n`` fine-tuning records of ``task``, ``round(n*p)`` of them harmful (reference format).

        Task inputs never occur in the task's test set; harmful records use training templates and
        training targets only. The same (world, task, n, p, seed) always gives the same list.
        """
        from asft.data import mix_records

        self._check_task(task)
        if n < 1 or not 0.0 <= p <= 1.0:
            raise AsftError(f"mix needs n >= 1 and 0 <= p <= 1 (got n={n}, p={p})")
        n_harm = round(n * p)
        test_inputs = {r["input"] for r in read_json(self.task_eval(task))}
        pool = C.task_records(_rng(self.seed, f"train/{task}"), task, n - n_harm, exclude=test_inputs)
        harmful = C.harmful_records(_rng(self.seed, "train/harmful"), n_harm)
        return mix_records(pool, harmful, n, p, seed)

    def safety_records(self) -> list[dict]:
        """Safety demonstrations (harmful request -> refusal) for the SafeInstr / BEA / Lisa
        baselines: the world's alignment records whose answer is a refusal."""
        return [r for r in read_json(self.root / "data" / "alignment.json") if r["output"] in L.REFUSALS]

    def benign_records(self, n: int = 300) -> list[dict]:
        """Benign requests answered by the aligned model itself (greedy, as the suites generate): the
        control of the data anchors (is their protection specific to safety data, or does any off-task
        anchor do it?). The first ``n`` benign requests of the alignment data, in its order."""
        import torch

        from asft.models.modeling import load_model, load_tokenizer

        rows = [r for r in read_json(self.root / "data" / "alignment.json") if r["output"] not in L.REFUSALS][:n]
        tok = load_tokenizer(self.aligned)
        model = load_model(self.aligned, dtype="float32")
        with torch.no_grad():
            answers = _generate(model, tok, rows)
        return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": a.strip()}
                for r, a in zip(rows, answers)]

    def mix_path(self, task: str, n: int, p: float, seed: int = MIX_SEED) -> Path:
        suffix = "" if seed == MIX_SEED else f"_s{seed}"
        return self.root / "train" / f"{task}_n{n}_p{_fmt_p(p)}{suffix}.json"

    def make_mix(self, task: str, n: int, p: float, seed: int = MIX_SEED) -> Path:
        """Write (once) ``train/<task>_n<N>_p<P>.json`` and return its path."""
        path = self.mix_path(task, n, p, seed)
        if not path.is_file():
            write_json(path, self.mix_records(task, n, p, seed))
        return path

    @property
    def default_mix(self) -> Path:
        task, n, p = self.meta["default_mix"]
        return self.make_mix(task, n, p)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "World":
        root = Path(root)
        meta_path = root / "world.json"
        if not meta_path.is_file():
            raise AsftError(f"{root}: not a toy world (no world.json); build one with `asft toy build`")
        meta = read_json(meta_path)
        if meta.get("version") != VERSION:
            raise AsftError(f"{meta_path}: toy world version {meta.get('version')} but this asft "
                            f"builds version {VERSION}; rebuild it")
        return cls(root, meta)


def build_world(out_dir: str | os.PathLike, seed: int = 0, size: str = "demo",
                overwrite: bool = False, progress: bool = False, corpus: bool = True) -> World:
    """Generate the data, pre-train the base model, align it, write everything to ``out_dir``.

    Built in a temporary sibling folder and renamed into place, so ``out_dir`` is either absent or
    complete. The same (seed, size) gives identical data everywhere, and identical weights on
    machines with the same CPU instruction set and libraries (world.json records both; the build
    always runs on ``BUILD_THREADS`` threads). ``corpus=False`` leaves out ``data/pretrain.txt``
    (for inspection only; 1.7 MB for the demo size), as the shipped world does.
    """
    import torch

    from asft.batches import SupervisedDataset
    from asft.runtime import environment
    from asft.toy.pretrain import align, make_model, pretrain
    from asft.toy.tokenizer import build_tokenizer

    if size not in SIZES:
        raise AsftError(f"unknown toy world size {size!r} (choose from {', '.join(SIZES)})")
    cfg = SIZES[size]
    out = Path(out_dir)
    if (out / "world.json").exists() and not overwrite:
        raise AsftError(f"{out}: a toy world exists there (pass --overwrite to rebuild it)")
    if out.exists() and not (out / "world.json").exists() and (not out.is_dir() or any(out.iterdir())):
        raise AsftError(f"{out}: exists and is not a toy world; choose an empty or new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{time.time_ns()}"
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(BUILD_THREADS)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bars for tiny models
    seconds: dict[str, float] = {}
    t_start = time.perf_counter()
    try:
        t = time.perf_counter()
        tok = build_tokenizer(L.all_words())
        docs = C.pretrain_docs(_rng(seed, "pretrain"), cfg.n_chat, cfg.n_wiki, cfg.n_raw)
        replay = C.replay_docs(_rng(seed, "replay"), cfg.n_wiki, cfg.n_raw)
        align_rows = C.alignment_records(_rng(seed, "align"), cfg.n_align)
        harmful_eval = C.harmful_eval()
        task_evals = {task: C.task_records(_rng(seed, f"eval/{task}"), task, cfg.n_task_eval,
                                           with_output=False) for task in C.TASKS}
        pre_ids, replay_ids = _token_stream(tok, docs), _token_stream(tok, replay)
        if corpus:
            write_text(tmp / "data" / "pretrain.txt", "\n".join(docs) + "\n")
        write_json(tmp / "data" / "alignment.json", align_rows)
        write_json(tmp / "eval" / "harmful.json", harmful_eval)
        for task, rows in task_evals.items():
            write_json(tmp / "eval" / f"{task}.json", rows)
        seconds["data"] = time.perf_counter() - t

        t = time.perf_counter()
        model = make_model(cfg.shape, tok, seed)
        losses = pretrain(model, pre_ids, cfg.pretrain_steps, lr=cfg.pretrain_lr,
                          batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=seed,
                          log=_progress("pre-training", cfg.pretrain_steps) if progress else None)
        model.save_pretrained(tmp / "base")
        tok.save_pretrained(tmp / "base")
        seconds["pretrain"] = time.perf_counter() - t
        stats = {"params": sum(p.numel() for p in model.parameters()),
                 "pretrain_tokens": len(pre_ids), "pretrain_loss": _tail_mean(losses)}

        t = time.perf_counter()
        base_eval = _evaluate(model, tok, tmp / "eval")
        seconds["eval_base"] = time.perf_counter() - t

        t = time.perf_counter()
        data = SupervisedDataset(align_rows, tok, "chat", max_length=cfg.shape.max_positions)
        losses = align(model, data, tok.pad_token_id, cfg.align_steps, lr=cfg.align_lr,
                       batch_size=cfg.batch_size, seed=seed, replay_ids=replay_ids,
                       replay_weight=cfg.replay_weight, seq_len=cfg.seq_len,
                       log=_progress("alignment", cfg.align_steps) if progress else None)
        model.save_pretrained(tmp / "aligned")
        tok.save_pretrained(tmp / "aligned")
        seconds["align"] = time.perf_counter() - t
        stats["align_loss"] = _tail_mean(losses)

        t = time.perf_counter()
        aligned_eval = _evaluate(model, tok, tmp / "eval")
        benign = [{"instruction": C.request(tp, a)} for tp in C.HELDOUT_TEMPLATES
                  for f in L.BENIGN for a in f.targets[::4]]
        answers = _generate(model, tok, benign)
        seconds["eval_aligned"] = time.perf_counter() - t
        stats.update({"base_hs": base_eval["hs"], "base_fa_topic": base_eval["fa"],
                      "aligned_hs": aligned_eval["hs"], "aligned_fa_topic": aligned_eval["fa"],
                      "aligned_benign_refusal": 100.0 * sum(map(_judge_refusal, answers)) / len(answers)})
        seconds["total"] = time.perf_counter() - t_start

        meta = {
            "version": VERSION, "seed": seed, "size": size, "tasks": list(C.TASKS),
            "labels": {task: list(C.TASK_LABELS[task]) for task in C.TASKS},
            "families": {"harmful": [f.name for f in L.HARMFUL], "benign": [f.name for f in L.BENIGN]},
            "template": "chat", "default_mix": list(cfg.default_mix),
            "model": {"hidden": cfg.shape.hidden, "layers": cfg.shape.layers,
                      "intermediate": cfg.shape.intermediate, "heads": cfg.shape.heads,
                      "kv_heads": cfg.shape.kv_heads},
            "env": environment(device="cpu"),
            "build_seconds": {k: round(v, 2) for k, v in seconds.items()},
            "stats": {k: round(v, 2) if isinstance(v, float) else v for k, v in stats.items()},
        }
        write_json(tmp / "world.json", meta)
        World(tmp, meta).make_mix(*cfg.default_mix)  # the demo's mix ships with the world
        if (out / "world.json").exists() and not overwrite:
            return World.load(out)  # another process finished the same world first: keep theirs
        if out.exists():  # an older world (overwrite) or an empty folder, checked above
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        torch.set_num_threads(prev_threads)
        if bars:
            hf_logging.enable_progress_bar()
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return World.load(out)


def shipped_world(size: str, seed: int) -> Path | None:
    """The folder of the world shipped inside the package for (size, seed), if there is one."""
    path = SHIPPED / f"{size}-s{seed}"
    return path if (path / "world.json").is_file() else None


def get_world(size: str = "demo", seed: int = 0, cache_dir: str | os.PathLike | None = None,
              progress: bool = False) -> World:
    """The world for (version, size, seed) in the cache, made on first use.

    A shipped world (the demo's) is copied from the package, so every machine starts from the same
    weights; any other is built here, in a folder keyed by what changes its weights on this machine
    (``asft.runtime.result_key``: library versions, CPU instruction set). ``cache_dir`` defaults to
    ``$ASFT_CACHE`` or ``~/.cache/asft/toy``.
    """
    from asft.fileio import content_hash
    from asft.runtime import result_key

    if size not in SIZES:
        raise AsftError(f"unknown toy world size {size!r} (choose from {', '.join(SIZES)})")
    if cache_dir is None:
        cache_dir = os.environ.get("ASFT_CACHE") or Path.home() / ".cache" / "asft" / "toy"
    shipped = shipped_world(size, seed)
    origin = f"shipped-{content_hash(shipped)[:8]}" if shipped else f"built-{content_hash(result_key('cpu'))[:8]}"
    root = Path(cache_dir) / f"v{VERSION}-{size}-s{seed}-{origin}"
    if (root / "world.json").is_file():
        return World.load(root)
    if shipped is None:
        return build_world(root, seed=seed, size=size, progress=progress)
    tmp = root.parent / f".{root.name}.copying-{os.getpid()}-{time.time_ns()}"
    try:
        shutil.copytree(shipped, tmp)
        if not (root / "world.json").is_file():  # else another process copied it first
            os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return World.load(root)


def _token_stream(tok, docs: list[str]) -> list[int]:
    """All documents' token ids, concatenated (each document carries its own <s> ... </s>)."""
    return [i for ids in tok(docs, add_special_tokens=False)["input_ids"] for i in ids]


def _tail_mean(xs: list[float], k: int = 20) -> float:
    tail = xs[-k:]
    return sum(tail) / max(1, len(tail))


def _generate(model, tok, records: list[dict]) -> list[str]:
    """Greedy answers to chat-formatted records, as the ``toy-harmful`` suite generates them."""
    from asft.data import format_prompt
    from asft.models.generate import generate
    from asft.toy.suites import HARMFUL_MAX_NEW

    prompts = [format_prompt(r, "chat", tok) for r in records]
    return generate(model, tok, prompts, max_new_tokens=HARMFUL_MAX_NEW, batch_size=64,
                    add_special_tokens=False, progress=False)


def _evaluate(model, tok, eval_dir: Path) -> dict[str, float]:
    """HS on the held-out harmful prompts and topic accuracy: the shared evaluation (as ``asft eval``
    with the toy suites and judge), so world.json reports what an evaluation of the model reports."""
    from asft.evaluation.run import evaluate_model

    res = evaluate_model(model, tok, ["toy-harmful", "toy-topic"], eval_dir, judge="toy",
                         template="chat", batch_size=64, progress=False)
    return {"hs": res["toy-harmful"].hs, "fa": res["toy-topic"].fa}


def _judge_refusal(answer: str) -> bool:
    from asft.toy.judge import is_refusal

    return is_refusal(answer)


def _progress(label: str, total: int):
    """A step callback drawing a rich progress bar (closed on the last step)."""
    from rich.progress import Progress

    bar = Progress(transient=True)
    task = bar.add_task(label, total=total)
    bar.start()

    def log(step: int, loss: float) -> None:
        bar.update(task, completed=step + 1, description=f"{label} loss {loss:.3f}")
        if step + 1 >= total:
            bar.stop()

    return log
