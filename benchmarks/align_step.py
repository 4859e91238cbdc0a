"""`asft align`'s full fine-tuning step on a real model on CPU: what makes a pair cheaper to build.

Three variants of one step (forward, backward, gradient clipping, AdamW on every weight) on the same
length-grouped batches of the alignment examples (harmful requests -> refusals, Alpaca requests ->
the pool's answers, so no generation is needed), run round-robin in one process so that a shared
machine's load hits them alike:

* ``full``: the output layer at every position in float32 (what `asft align` did until now);
* ``labels``: the output layer only where a label is (``keep_label_positions``: the same loss);
* ``labels+bf16``: the same under bf16 autocast (weights, gradients, AdamW states stay float32).

Reports the median seconds per step after one warm-up step, the speed-up over ``full``, and how far
each variant's losses are from ``full``'s (the same batches, each variant with its own model copy).

    python benchmarks/align_step.py --model ~/.cache/asft/models/gemma3-270m --template alpaca
        [--reference ../shared/data/asft-reference] [--steps 6] [--out benchmarks/results/align_step_<model>.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.batches import PadCollator, SupervisedDataset, length_grouped_batches  # noqa: E402
from asft.models.modeling import load_model, load_tokenizer  # noqa: E402
from asft.runtime import environment  # noqa: E402
from asft.training.align import AlignConfig, build_examples, reference_files  # noqa: E402
from asft.training.trainer import keep_label_positions  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {"full": (False, False), "labels": (True, False), "labels+bf16": (True, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path("~/.cache/asft/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--template", default="chat")
    ap.add_argument("--reference", default=str(HERE.parents[1] / "shared" / "data" / "asft-reference"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)  # the pair recipes run on one thread (ASFT_THREADS=1)

    h, b, e = reference_files(args.reference)
    cfg = AlignConfig(model=args.model, out="unused", harmful=h, benign=b, exclude=e, n_harmful=881,
                      n_benign=400, benign_targets="data", template=args.template, max_length=args.max_length)
    rows, _ = build_examples(cfg)
    tok = load_tokenizer(args.model)
    data = SupervisedDataset(rows, tok, args.template, args.max_length)
    collate = PadCollator(tok.pad_token_id)
    lengths = [len(data[i]["input_ids"]) for i in range(len(data))]
    order = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(0))[: args.steps]
    batches = [collate([data[j] for j in idx]) for idx in order]

    models = {}
    for name in VARIANTS:
        model = load_model(args.model, dtype="float32", device="cpu")
        model.train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0))
    times = {n: [] for n in VARIANTS}
    losses = {n: [] for n in VARIANTS}
    for batch in batches:
        for name, (labels_only, bf16) in VARIANTS.items():
            model, opt = models[name]
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                inputs = keep_label_positions(model, batch) if labels_only else batch
                loss = model(**inputs).loss.float()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
            losses[name].append(loss.item())
    med = {n: statistics.median(t[1:]) for n, t in times.items()}
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    result = {"model": Path(args.model).name, "steps_timed": len(batches) - 1,
              "tokens_per_step": round(tokens / max(1, len(batches) - 1), 1),
              "label_fraction": round(sum(int((b["labels"] != -100).sum()) for b in batches[1:]) / tokens, 3),
              "seconds_per_step": {n: round(v, 3) for n, v in med.items()},
              "speedup_over_full": {n: round(med["full"] / v, 2) for n, v in med.items()},
              "losses": {n: [round(x, 4) for x in v] for n, v in losses.items()},
              "max_abs_loss_diff_vs_full": {n: round(max(abs(a - c) for a, c in zip(v, losses["full"])), 4)
                                            for n, v in losses.items()},
              "env": environment()}
    print(f"{result['model']}: {result['tokens_per_step']} tokens per step, {result['label_fraction']:.0%} labels")
    print(f"{'variant':<14}{'s/step':>9}{'speed-up':>10}{'max |loss - full|':>20}")
    for n in VARIANTS:
        print(f"{n:<14}{med[n]:>9.2f}{result['speedup_over_full'][n]:>9.2f}x"
              f"{result['max_abs_loss_diff_vs_full'][n]:>20.4f}")
    out = Path(args.out or HERE / "results" / f"align_step_{result['model']}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
