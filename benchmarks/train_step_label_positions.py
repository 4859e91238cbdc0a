"""A LoRA training step on a real model on CPU: the output layer at every position against only
where the next token is a label (``asft.training.train.keep_label_positions``, what ``asft train`` does).

Batches are real: the first examples of the SST-2 mix (``SST2_1k_p_0.1.json``, 10 % harmful) encoded
as ``asft train`` encodes them (template, response-only labels, max length 256), 8 per batch, grouped
by length. Both variants run round-robin in one process on the same batches (a shared machine's load
hits both alike): forward, backward, AdamW on LoRA r 8 / alpha 32 on q_proj, v_proj, the base in
bf16 as the real-model configs train. Also reported: the largest loss difference between the two.

    python benchmarks/train_step_label_positions.py --model ~/.cache/asft/models/gemma3-270m --template alpaca
        [--data ../shared/data/asft-reference/train/SST2/SST2_1k_p_0.1.json] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _step import timed_step  # noqa: E402  (benchmarks/_step.py)
from asft.data import PadCollator, SupervisedDataset, length_grouped_batches, load_records  # noqa: E402
from asft.models.modeling import load_tokenizer  # noqa: E402
from asft.training.trainer import keep_label_positions  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def make(model_dir: str, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path("~/.cache/asft/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--template", default="chat")
    ap.add_argument("--data", default=str(REPO.parent / "shared/data/asft-reference/train/SST2/SST2_1k_p_0.1.json"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="JSON output (default benchmarks/results/train_step_label_positions_<model>.json)")
    args = ap.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no model folder (scripts/get-real-models.sh)")
    if not Path(args.data).is_file():
        sys.exit(f"{args.data}: no training file (the reference data, ../shared/data/asft-reference)")
    torch.set_num_threads(args.threads)
    tok = load_tokenizer(args.model)
    data = SupervisedDataset(load_records(args.data)[:8 * 50], tok, args.template, max_length=256)
    order = length_grouped_batches([len(e.input_ids) for e in data.examples], 8, torch.Generator().manual_seed(0))
    collate = PadCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    batches = [collate([data[i] for i in b]) for b in order[:args.steps + 1]]
    variants = {"every position": make(args.model), "label positions": make(args.model)}
    times = {k: [] for k in variants}
    losses = {k: [] for k in variants}
    positions = {"every position": 0, "label positions": 0}
    for i, batch in enumerate(batches):
        for name, (model, opt) in variants.items():
            inputs = batch if name == "every position" else keep_label_positions(model, batch)
            positions[name] += int(batch["input_ids"].numel() if name == "every position"
                                   else inputs["logits_to_keep"].sum())
            seconds, loss = timed_step(lambda: model(**inputs).loss, opt)
            if i:  # the first round warms up
                times[name].append(seconds)
            losses[name].append(loss)
    med = {k: statistics.median(v) for k, v in times.items()}
    full = med["every position"]
    name = Path(args.model).name
    res = {"model": name, "vocab": variants["every position"][0].config.vocab_size, "threads": args.threads,
           "batch": 8, "steps": args.steps, "template": args.template,
           "output_layer_rows": positions, "step_seconds": {k: round(v, 3) for k, v in med.items()},
           "speedup": round(full / med["label positions"], 2),
           "max_loss_diff": float(f"{max(abs(a - b) for a, b in zip(*losses.values())):.2g}"),
           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print(f"{name}, vocabulary {res['vocab']}, batches of 8 from {Path(args.data).name}, {args.threads} thread(s)")
    print("| output layer at | rows | step (s) | ratio |\n|---|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {positions[k]} | {v:.3f} | {full / v:.2f}x |")
    print(f"loss difference, max over {len(batches)} steps: {res['max_loss_diff']}")
    out = Path(args.out or HERE / "results" / f"train_step_label_positions_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
