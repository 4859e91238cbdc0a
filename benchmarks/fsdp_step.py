"""LoRA step time of a 7B-shaped Llama (random weights) with and without the l2 penalty, DDP against
asft's FSDP2 (`asft train --fsdp`: `asft.training.fsdp.shard_model`), on the GPUs present.

    torchrun --nproc_per_node N benchmarks/fsdp_step.py [--steps 10] [--seq 512] [--batch 4]
    torchrun --nproc_per_node 2 benchmarks/fsdp_step.py --tiny      # a CPU smoke run (gloo), seconds

Each rank builds the same random model (bf16 base, float32 LoRA r 8 on q_proj / v_proj), then for
each of the four settings (ddp / fsdp x sft / l2) times --steps optimiser steps after 2 warm-up steps,
all settings in one process so that they see the same machine. Prints a table (seconds per step, peak
GPU memory per rank, the penalty's share of the step) and writes JSON to benchmarks/results/. Not run
yet: no GPU machine has been lent to this project (the README says so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

SEVEN_B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, max_position_embeddings=256)


def build(shape: dict, device: torch.device, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**shape)).to(dtype)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():
        if "lora_" in n:
            p.data = p.data.float()
    return model


def run(setting: str, penalty: bool, args, device, dtype) -> dict:
    from asft.methods.regularizer import AsftPenalty

    model = build(TINY if args.tiny else SEVEN_B, device, dtype)
    if setting == "fsdp":
        from asft.training.fsdp import shard_model

        shard_model(model)
        wrapped = model
    else:
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    pen = AsftPenalty.from_model(model, None, form="zero", lam=1.0) if penalty else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = (TINY if args.tiny else SEVEN_B)["vocab_size"]
    g = torch.Generator().manual_seed(dist.get_rank())
    ids = torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, pen_times = [], []
    for step in range(args.steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype):
            loss = wrapped(input_ids=ids, labels=ids).loss
        tp = time.perf_counter()
        if pen is not None:
            loss = loss + pen()
        tp = time.perf_counter() - tp
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:  # warm-up steps left out
            times.append(time.perf_counter() - t0)
            pen_times.append(tp)
    out = {"setting": setting, "penalty": penalty, "seconds_per_step": sum(times) / len(times),
           "penalty_seconds": sum(pen_times) / len(pen_times)}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del model, wrapped, opt
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--tiny", action="store_true", help="a tiny Llama on CPU (gloo): checks the script runs")
    args = ap.parse_args()
    if args.tiny:
        args.seq, args.batch, args.steps = 32, 2, 2
    cuda = torch.cuda.is_available() and not args.tiny
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dtype = torch.bfloat16  # the base in bf16, LoRA in float32 (their own FSDP groups), as asft train runs it
    rows = [run(s, p, args, device, dtype) for s in ("ddp", "fsdp") for p in (False, True)]
    world = dist.get_world_size()
    dist.destroy_process_group()
    if rank == 0:
        name = "tiny-cpu" if args.tiny else torch.cuda.get_device_name(device).replace(" ", "-")
        doc = {"model": "tiny" if args.tiny else "llama-7b-shaped", "processes": world, "device": name, "seq": args.seq, "batch_per_rank": args.batch,
               "steps": args.steps, "rows": rows}
        print(f"{'setting':8} {'penalty':8} {'s/step':>9} {'penalty s':>10} {'peak GiB':>9}")
        for r in rows:
            print(f"{r['setting']:8} {str(r['penalty']):8} {r['seconds_per_step']:9.3f} {r['penalty_seconds']:10.4f} "
                  f"{r.get('peak_gib', float('nan')):9.2f}")
        path = Path(__file__).resolve().parent / "results" / f"fsdp_step_{name}.json"
        if not args.tiny:
            path.write_text(json.dumps(doc, indent=2) + "\n")
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
