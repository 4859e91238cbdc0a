"""Where evaluation time goes on this CPU: the matrix-product peak, a prefill, and one decode step
with the plain KV cache (concatenation) against the cache with room to grow (appends in place),
side by side in one run, one thread.

    python benchmarks/decode_profile.py --model ~/.cache/asft/models/smollm2-135m-instruct [--rows 64 --seq 400]

Prints a table and writes benchmarks/results/decode_profile_<model>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.fileio import write_json  # noqa: E402
from asft.models.generate import _new_cache  # noqa: E402
from asft.models.modeling import load_model  # noqa: E402
from asft.runtime import environment  # noqa: E402

HERE = Path(__file__).resolve().parent


def gemm_gflops(dtype: torch.dtype, m: int = 4480, k: int = 576, n: int = 1536, reps: int = 20) -> float:
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * m * k * n * reps / (time.perf_counter() - t) / 1e9


@torch.no_grad()
def decode_step_ms(model, rows: int, seq: int, roomy: bool, steps: int = 8) -> tuple[float, torch.Tensor]:
    from transformers import DynamicCache

    ids = torch.randint(100, 1000, (rows, seq), generator=torch.Generator().manual_seed(0))
    cache = _new_cache(model) if roomy else DynamicCache(config=model.config)
    out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
    nxt, toks = out.logits[:, -1:].argmax(-1), []
    t = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        nxt = out.logits[:, -1:].argmax(-1)
        toks.append(nxt)
    return (time.perf_counter() - t) / steps * 1000, torch.cat(toks, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--seq", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model).eval()
    decoder = model.get_decoder()
    params = sum(p.numel() for p in decoder.parameters()) - decoder.get_input_embeddings().weight.numel()
    flop_per_token = 2 * params  # the decoder's matrix products per token (the embedding is a lookup)
    doc = {"model": args.model, "env": environment("cpu"), "threads": 1,
           "gemm_gflops": {"float32": round(gemm_gflops(torch.float32), 1),
                           "bfloat16": round(gemm_gflops(torch.bfloat16), 1)}}
    ids = torch.randint(100, 1000, (16, 70), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.get_decoder()(input_ids=ids)
        t = time.perf_counter()
        model.get_decoder()(input_ids=ids)
        dt = time.perf_counter() - t
    doc["prefill_16x70_gflops"] = round(16 * 70 * flop_per_token / dt / 1e9, 1)
    plain_ms, plain_toks = decode_step_ms(model, args.rows, args.seq, roomy=False)
    roomy_ms, roomy_toks = decode_step_ms(model, args.rows, args.seq, roomy=True)
    doc["decode_step_ms"] = {"rows": args.rows, "seq": args.seq, "plain_cache": round(plain_ms, 1),
                             "roomy_cache": round(roomy_ms, 1), "ratio": round(plain_ms / roomy_ms, 2),
                             "identical_tokens": bool(torch.equal(plain_toks, roomy_toks))}
    print("| measure | value |\n|---|---|")
    print(f"| float32 matmul peak (1 thread) | {doc['gemm_gflops']['float32']} GFLOP/s |")
    print(f"| bfloat16 matmul peak (1 thread) | {doc['gemm_gflops']['bfloat16']} GFLOP/s |")
    print(f"| prefill 16 x 70 tokens, decoder | {doc['prefill_16x70_gflops']} GFLOP/s |")
    d = doc["decode_step_ms"]
    print(f"| decode step, {d['rows']} rows at {d['seq']} tokens: plain / roomy cache | {d['plain_cache']} / "
          f"{d['roomy_cache']} ms ({d['ratio']}x, identical tokens: {d['identical_tokens']}) |")
    out = HERE / "results" / f"decode_profile_{Path(args.model).name}.json"
    write_json(out, doc)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
