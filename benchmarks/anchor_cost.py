"""The cost of each method's training-time term: one LoRA optimiser step with it against a plain LoRA
step (``sft``), side by side in one process on the same batches.

Each method's term is built exactly as ``asft train`` builds it (``Method.build_hook``: statistics,
references, rotating prompt subsets) and applied as the trainer applies it: a per-update penalty
(hidden-anchor, kl-anchor: their own forward on ``--anchor-batch`` safety prompts) once per step, the
null-space projection after the optimiser step. Batches: 8 task records per step (grouped by length,
the output layer at label positions only, as ``asft train``); LoRA r 8 / alpha 32 on q_proj, v_proj.
The variants run round-robin (a shared machine's load hits them alike); the table gives the median
step and its ratio to the plain step. Start-up costs (statistics, references) are reported apart.

    python benchmarks/anchor_cost.py                                  # the toy world (demo size)
    python benchmarks/anchor_cost.py --model ~/.cache/asft/models/smollm2-135m-instruct --template chat \\
        --data ../shared/data/asft-reference/train/SST2/SST2_1k_p_0.1.json --safety safety.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HERE = Path(__file__).resolve().parent
METHODS = ("sft", "l2", "act-anchor", "fisher-anchor", "nullspace", "hidden-anchor", "kl-anchor")


def build(name: str, model_dir: str, tok, cfg_kw: dict, dtype):
    """``name``: a method, or ``method@b`` for a per-update anchor at --anchor-batch b."""
    from asft.methods import get_method
    from asft.models.modeling import load_model
    from asft.training.train import TrainConfig, build_penalty, prepare_model

    name, _, batch = name.partition("@")
    cfg = TrainConfig(model=model_dir, method=name, lam=1.0, lora_dropout=0.0, **cfg_kw)
    if batch:
        cfg.anchor_batch = int(batch)
    method = get_method(name)
    model = load_model(model_dir, dtype=dtype)
    torch.manual_seed(0)
    model = prepare_model(model, cfg)
    model.train()
    t0 = time.perf_counter()
    penalty = build_penalty(model, cfg, None)
    hook = method.build_hook(cfg, model, tok, None, 1)
    setup = time.perf_counter() - t0
    penalty = penalty if penalty is not None else getattr(hook, "penalty", None)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    after = getattr(hook, "after_optimizer_step", None)
    if after is not None:
        opt.register_step_post_hook(lambda *_: after())
    return model, opt, penalty, setup


def main() -> None:
    from asft.data import load_records
    from asft.fileio import write_json
    from asft.batches import PadCollator, SupervisedDataset, length_grouped_batches
    from asft.models.modeling import load_tokenizer
    from asft.runtime import apply_threads
    from asft.training.config import TrainConfig
    from asft.training.trainer import keep_label_positions

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="model folder (default: the toy world's aligned model, demo size)")
    ap.add_argument("--template", default="chat")
    ap.add_argument("--data", help="task records (default: the toy world's topic mix)")
    ap.add_argument("--safety", help="safety demonstrations (default: the toy world's)")
    ap.add_argument("--methods", nargs="*", default=list(METHODS),
                    help="methods, e.g. sft hidden-anchor@2 (at --anchor-batch 2); sft is the reference")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON output (default benchmarks/results/anchor_cost_<model>.json)")
    args = ap.parse_args()
    apply_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="anchor_cost_"))  # the toy world's safety file, made each time
    toy = args.model is None
    if toy:
        from asft.toy import get_world

        world = get_world("demo", 0)
        args.model, args.data = str(world.aligned), args.data or str(world.make_mix("topic", 1000, 0.1))
        if args.safety is None:
            args.safety = str(work / "toy_safety.json")
            write_json(args.safety, world.safety_records())
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no model folder (scripts/get-real-models.sh)")
    for what in ("data", "safety"):
        if not getattr(args, what) or not Path(getattr(args, what)).is_file():
            sys.exit(f"--{what}: no file {getattr(args, what)!r}")
    tok = load_tokenizer(args.model)
    data = SupervisedDataset(load_records(args.data)[:8 * 50], tok, args.template, max_length=args.max_length)
    order = length_grouped_batches([len(e.input_ids) for e in data.examples], 8, torch.Generator().manual_seed(0))
    collate = PadCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    batches = [collate([data[i] for i in b]) for b in order[:args.steps + 1]]
    cfg_kw = dict(template=args.template, max_length=args.max_length, safety_data=args.safety, out=None)
    variants, setup = {}, {}
    for name in args.methods:
        model, opt, penalty, setup[name] = build(name, args.model, tok, cfg_kw, args.dtype)
        variants[name] = (model, opt, penalty)
    times = {k: [] for k in variants}
    for i, batch in enumerate(batches):
        for name, (model, opt, penalty) in variants.items():
            inputs = keep_label_positions(model, batch)
            t0 = time.perf_counter()
            loss = model(**inputs).loss
            if penalty is not None:
                loss = loss + (penalty(i) if getattr(penalty, "per_step", False) else penalty())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = med.get("sft") or next(iter(med.values()))
    name = "toy-demo" if toy else Path(args.model).name
    res = {"model": name, "threads": args.threads, "batch": 8, "steps": args.steps, "dtype": args.dtype,
           "anchor_batch_default": TrainConfig().anchor_batch,
           "step_seconds": {k: round(v, 4) for k, v in med.items()},
           "ratio_to_plain": {k: round(v / plain, 3) for k, v in med.items()},
           "setup_seconds": {k: round(v, 2) for k, v in setup.items()},
           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"{name}, batches of 8 from {Path(args.data).name}, {args.threads} thread(s), {args.dtype}")
    print("| method | step (s) | ratio to plain LoRA | start-up (s) |\n|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {v / plain:.2f}x | {setup[k]:.1f} |")
    out = Path(args.out or HERE / "results" / f"anchor_cost_{name}.json")
    write_json(out, res)  # temporary file + rename
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
