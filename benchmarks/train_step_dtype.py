"""A LoRA + AsFT-penalty training step on a real model on CPU: float32 against bfloat16 weights.

The CPUs here have AVX512-bf16 (about 4.5x the float32 matmul peak, benchmarks/decode_profile.py),
so a bf16 base model with float32 LoRA weights (PEFT keeps adapters in float32) may train much
faster. Both variants run round-robin in one process (a shared machine's load hits both alike):
forward, backward and AdamW on LoRA r 8 / alpha 32 on q_proj, v_proj, batch 8 x --seq tokens, the
penalty added at lambda 1 (its l2 form: the penalty is computed in float32 either way, and its cost
is benchmarks/regularizer_overhead.py's subject). Also reported: how far the
bf16 loss and the LoRA update after --steps steps are from float32's.

    python benchmarks/train_step_dtype.py [--model ~/.cache/asft/models/smollm2-135m-instruct]
        [--steps 6] [--seq 128] [--out benchmarks/results/train_step_dtype.json]
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
from asft.methods.regularizer import AsftPenalty  # noqa: E402

HERE = Path(__file__).resolve().parent


def make(model_dir: str, dtype: torch.dtype, seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj"]))
    penalty = AsftPenalty.from_model(model, None, form="zero", lam=1.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return model, penalty, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path("~/.cache/asft/models/smollm2-135m-instruct").expanduser()))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "train_step_dtype.json"))
    args = ap.parse_args()
    if not Path(args.model, "config.json").is_file():
        sys.exit(f"{args.model}: no model folder (scripts/get-real-models.sh)")
    torch.set_num_threads(args.threads)
    variants = {"float32": make(args.model, torch.float32), "bfloat16": make(args.model, torch.bfloat16)}
    g = torch.Generator().manual_seed(2)
    vocab = variants["float32"][0].config.vocab_size
    batches = [torch.randint(0, vocab, (8, args.seq), generator=g) for _ in range(args.steps + 1)]
    times = {k: [] for k in variants}
    losses = {k: [] for k in variants}
    for i, ids in enumerate(batches):
        for name, (model, penalty, opt) in variants.items():
            seconds, loss = timed_step(lambda: model(input_ids=ids, labels=ids).loss.float() + penalty(), opt)
            if i:  # the first round warms up
                times[name].append(seconds)
            losses[name].append(loss)

    def update(model):
        return torch.cat([p.detach().float().flatten() for n, p in model.named_parameters() if "lora_B" in n])

    u32, u16 = update(variants["float32"][0]), update(variants["bfloat16"][0])
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"model": Path(args.model).name, "threads": args.threads, "batch": [8, args.seq], "steps": args.steps,
           "step_seconds": {k: round(v, 3) for k, v in med.items()},
           "speedup_bf16": round(med["float32"] / med["bfloat16"], 2),
           "max_loss_diff": round(max(abs(a - b) for a, b in zip(losses["float32"], losses["bfloat16"])), 4),
           "lora_B_rel_diff": round(float((u32 - u16).norm() / u32.norm()), 4),
           "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    print("| weights | step (s) | ratio |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {med['float32'] / v:.2f}x |")
    print(f"loss |f32 - bf16| max over steps {res['max_loss_diff']}; LoRA B after {args.steps + 1} steps: "
          f"relative difference {res['lora_B_rel_diff']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
