"""Cost of the AsFT penalty: ours (exact, O(d^2 r)) vs the reference formulation (O(d^3)).

Part 1, penalty alone (forward + backward), at 7B shapes: per module, median of --steps after a
warm-up, for each shape class; a 64-module step is the per-module time times the module count
(32 layers x q_proj, v_proj). Shapes: Llama-2-7B (q, v: 4096 x 4096) and a GQA model (q 4096 x
4096, v 1024 x 4096), LoRA r = 8, random V with a power-law spectrum (sigma_i ~ 1/i).
  reference  C = V V^T / ||V||_F and I built per module per step, ||(I - C) (B A)||^2 (public code)
  full       ours, M = B - V (V^T B) / ||V||_F, sum((M^T M) * (A A^T))
  gram       ours, G = (I - C)^2 precomputed once (not timed), sum((B^T G B) * (A A^T))
  auto       ours as training uses it (gram when d_out < d_in, else full)
  rank-K     ours with a rank-K anchor file (factors), plus its relative error vs exact
Part 2, a whole training step (forward, backward, AdamW) of a small Llama with LoRA on q/v:
  plain LoRA vs + AsFT penalty (auto) vs + reference penalty vs + l2. Goal: asft / plain <= 1.10.
Part 3 (--device cuda): the same step on a randomly initialised 7B-shaped Llama in bf16, seq 512.

    python benchmarks/regularizer_overhead.py [--steps 5] [--out benchmarks/results/regularizer_overhead.json]

Timings on shared machines are noisy: compare the ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.models.anchor import AnchorEntry  # noqa: E402
from asft.methods.regularizer import AsftPenalty, ModuleOperator, build_operator, lora_pairs  # noqa: E402

HERE = Path(__file__).resolve().parent


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fns: dict, steps: int, device: torch.device, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each ``fns[name]()``, run round-robin (so load on a shared machine hits
    every variant alike) for ``steps`` rounds after ``warmup`` rounds."""
    times = {name: [] for name in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def power_law_V(d_out: int, d_in: int, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = min(d_out, d_in)
    U, _ = torch.linalg.qr(torch.randn(d_out, k, generator=g))
    W, _ = torch.linalg.qr(torch.randn(d_in, k, generator=g))
    s = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
    return ((U * s) @ W.T).to(device)


def reference_penalty(A, B, V):
    """What the public AsFT code computes per module per step (C and I materialised, d^3)."""
    C = V @ V.T / torch.linalg.matrix_norm(V)
    I = torch.eye(C.shape[0], device=V.device, dtype=V.dtype)
    return torch.linalg.matrix_norm((I - C) @ (B @ A)) ** 2


def penalty_alone(args, device) -> list[dict]:
    rows = []
    shapes = [("4096x4096", 4096, 4096), ("1024x4096 (GQA v)", 1024, 4096)]
    for label, d_out, d_in in shapes:
        V = power_law_V(d_out, d_in, 0, device)
        norm = float(torch.linalg.matrix_norm(V))
        g = torch.Generator().manual_seed(1)
        A = (torch.randn(args.r, d_in, generator=g) * 0.01).to(device).requires_grad_()
        B = (torch.randn(d_out, args.r, generator=g) * 0.01).to(device).requires_grad_()
        exact = AnchorEntry(name=label, shape=(d_out, d_in), norm=norm, V=V)

        def fb(fn):
            def step():
                A.grad = B.grad = None
                fn().backward()
            return step

        # Errors are measured against the reference formula in float64 (in float32 its d^3 products
        # are themselves off by ~1e-3 at d = 4096, more than any of our forms).
        with torch.no_grad():
            ref_value = float(reference_penalty(A.double(), B.double(), V.double()))
        fns, ops = {"reference": fb(lambda: reference_penalty(A, B, V))}, {}
        for strategy in ("full", "gram"):
            ops[strategy] = build_operator(exact, "reference", strategy=strategy).to(device)
        ops["auto"] = ops["gram" if d_out <= d_in else "full"]
        U, S, Vh = torch.linalg.svd(V, full_matrices=False)
        for k in args.ranks:
            low = AnchorEntry(name=label, shape=(d_out, d_in), norm=norm, U=U[:, :k], S=S[:k], Vh=Vh[:k])
            ops[f"rank{k}"] = build_operator(low, "reference").to(device)
        for name, op in ops.items():
            fns[name] = fb(lambda op=op: op.penalty(A, B))
        row = {"shape": label, "r": args.r}
        row.update({f"{k}_s": v for k, v in timed(fns, args.steps, device).items()})
        for name, op in ops.items():
            row[f"{name}_rel_err"] = abs(float(op.penalty(A, B).detach()) - ref_value) / ref_value
        print(f"  {label}: reference {row['reference_s']:.3f}s, full {row['full_s']:.4f}s, "
              f"gram {row['gram_s']:.4f}s per module", flush=True)
        rows.append(row)
        print(f"  {label}: reference {row['reference_s']:.3f}s, full {row['full_s']:.4f}s, "
              f"gram {row['gram_s']:.4f}s, auto {row['auto_s']:.4f}s per module", flush=True)
    return rows


def _lora_llama(hidden, layers, heads, kv_heads, vocab, dtype, device, seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=int(hidden * 8 / 3 // 64 * 64) or 2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      vocab_size=vocab, max_position_embeddings=4096)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05,
                                             target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():  # as after some training: B != 0
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    return model


def training_step(args, device, shape: str) -> dict:
    if shape == "7b":
        dims = dict(hidden=4096, layers=32, heads=32, kv_heads=32, vocab=32000)
        batch, seq, dtype = 1, 512, torch.bfloat16
    else:
        dims = dict(hidden=256, layers=4, heads=8, kv_heads=8, vocab=2000)
        batch, seq, dtype = 8, 128, torch.float32
    model = _lora_llama(**dims, dtype=dtype, device=device)
    model.train()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, dims["vocab"], (batch, seq), generator=g).to(device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    pairs = lora_pairs(model)
    from asft.models.anchor import Anchor
    entries = {}
    for i, (n, (A, B, _)) in enumerate(sorted(pairs.items())):
        V = power_law_V(B.shape[0], A.shape[1], i, device)
        entries[n] = AnchorEntry(name=n, shape=tuple(V.shape), norm=float(torch.linalg.matrix_norm(V)), V=V)
    anchor = Anchor(entries=entries, metadata={}, path=None)
    variants = {
        "plain": None,
        "asft": AsftPenalty.from_model(model, anchor, form="reference"),
        "l2": AsftPenalty.from_model(model, None, form="zero"),
        "reference": lambda: sum(reference_penalty(pairs[n][0].float(), pairs[n][1].float(), entries[n].V)
                                 for n in sorted(pairs)),
    }
    if shape == "7b" and not args.with_reference_7b:
        variants.pop("reference")  # ~64 x 2 d^3 per step: minutes on CPU, seconds on GPU
    row = {"model": shape, "batch": batch, "seq": seq, "dtype": str(dtype).replace("torch.", "")}

    def step(pen):
        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                loss = model(input_ids=ids, labels=ids).loss
            if pen is not None:
                loss = loss + pen()
            loss.backward()
            opt.step()
        return run

    times = timed({name: step(pen) for name, pen in variants.items()}, args.step_steps, device, warmup=2)
    for name, t in times.items():
        row[f"{name}_s"] = t
        print(f"  {shape} step, {name}: {t:.4f}s", flush=True)
    for name in variants:
        if name != "plain":
            row[f"{name}/plain"] = row[f"{name}_s"] / row["plain_s"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--step-steps", type=int, default=20,
                    help="rounds for the whole-step timing (short steps need more for a stable median)")
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--ranks", type=int, nargs="*", default=[8, 64])
    ap.add_argument("--modules", type=int, default=64, help="modules in a 7B step (32 layers x q, v)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-alone", action="store_true")
    ap.add_argument("--with-reference-7b", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "regularizer_overhead.json"))
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    result = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "steps": args.steps}
    if not args.skip_alone:
        print("penalty alone (forward + backward), per module:", flush=True)
        alone = penalty_alone(args, device)
        result["penalty_alone"] = alone
    print("training step:", flush=True)
    result["step"] = [training_step(args, device, "small")]
    if device.type == "cuda":
        result["step"].append(training_step(args, device, "7b"))

    # Tables.
    if not args.skip_alone:
        half = args.modules // 2
        print(f"\nPenalty alone, forward + backward, r = {args.r} ({args.device}, {result['threads']} threads)")
        cols = ["reference", "full", "gram", "auto"] + [f"rank{k}" for k in args.ranks]
        print("| shape | " + " | ".join(f"{c} s" for c in cols) + " | reference / auto | " +
              " | ".join(f"rank{k} rel. err" for k in args.ranks) + " |")
        print("|---" * (len(cols) + 2 + len(args.ranks)) + "|")
        for row in alone:
            print(f"| {row['shape']} | " + " | ".join(f"{row[c + '_s']:.4f}" for c in cols) +
                  f" | {row['reference_s'] / row['auto_s']:.0f}x | " +
                  " | ".join(f"{row[f'rank{k}_rel_err']:.2e}" for k in args.ranks) + " |")
        sq, gqa = alone
        totals = {
            "llama2-7b (64 x 4096^2)": {c: args.modules * sq[c + "_s"] for c in cols},
            "gqa (32 x 4096^2 + 32 x 1024x4096)": {c: half * (sq[c + "_s"] + gqa[c + "_s"]) for c in cols},
        }
        result["per_step_64_modules"] = totals
        print(f"\nPer training step, {args.modules} modules (per-module medians x count)")
        print("| model | " + " | ".join(f"{c} s" for c in cols) + " | reference / auto |")
        print("|---" * (len(cols) + 2) + "|")
        for name, t in totals.items():
            print(f"| {name} | " + " | ".join(f"{t[c]:.2f}" for c in cols) + f" | {t['reference'] / t['auto']:.0f}x |")
    print("\nWhole training step (forward, backward, AdamW)")
    print("| model | plain s | asft s | l2 s | reference s | asft / plain | l2 / plain | reference / plain |")
    print("|---|---|---|---|---|---|---|---|")
    for row in result["step"]:
        ref = row.get("reference_s")
        print(f"| {row['model']} ({row['dtype']}, batch {row['batch']} x {row['seq']}) | {row['plain_s']:.4f} | "
              f"{row['asft_s']:.4f} | {row['l2_s']:.4f} | {'-' if ref is None else f'{ref:.4f}'} | "
              f"{row['asft/plain']:.3f} | {row['l2/plain']:.3f} | "
              f"{'-' if ref is None else format(row['reference/plain'], '.2f')} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
