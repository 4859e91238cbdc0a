"""Generation throughput: `asft.models.generate` (batched, length-bucketed) vs one prompt at a time.

"one-at-a-time" is the reference evaluation loop (tokenize one prompt, ``model.generate`` greedily,
decode); "batched" is ``asft.models.generate.generate`` on the same prompts with --batch-size. Both run in
the same process on the same randomly initialised Llama, one after the other, after a warm-up call
each. Prompts are the reference instruction format around synthetic instructions of varied length;
a byte-level tokenizer (no downloads) makes one token per byte. With float32 on CPU the greedy
outputs of the two must be identical (checked and reported); bf16 on GPU may differ in a few.

    python benchmarks/generation_throughput.py                      # CPU, small model
    python benchmarks/generation_throughput.py --device cuda --shape 1b --prompts 64 --max-new-tokens 128

Shapes: tiny (d=64, 2 layers), small (d=256, 4 layers), 1b (Llama-3.2-1B-like: d=2048, 16 layers,
32 heads / 8 KV heads, MLP 8192, vocab 32000). Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=260),
    "small": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=260),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000),
}
WORDS = ("explain how the river system shapes the valley economy and why local farmers rotate crops "
         "during dry seasons while traders move goods along the coast to distant markets").split()


def byte_tokenizer():
    """4 special tokens (<unk> <s> </s> <pad>) + 256 byte symbols; ids beyond 260 decode to nothing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({c: i + 4 for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")


def make_prompts(n: int, seed: int = 0) -> list[str]:
    from asft.data import format_prompt

    rng = random.Random(seed)
    return [format_prompt({"instruction": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40)))}, "alpaca")
            for _ in range(n)]


def one_at_a_time(model, tok, prompts, max_new_tokens):
    """The reference loop: one prompt per ``model.generate`` call."""
    device = next(model.parameters()).device
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]], device=device)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, num_beams=1, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[:new.index(tok.eos_token_id)]
        out.append(tok.decode(new, skip_special_tokens=True).strip())
    return out


def main() -> None:
    from rich.console import Console
    from rich.table import Table
    from transformers import LlamaConfig, LlamaForCausalLM

    from asft.fileio import write_json
    from asft.models.generate import generate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: robust on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON path (default benchmarks/results/generation_throughput_<device>_<shape>.json)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = LlamaConfig(**SHAPES[args.shape], bos_token_id=1, eos_token_id=2, pad_token_id=3,
                      max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    tok = byte_tokenizer()
    prompts = make_prompts(args.prompts, args.seed)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    one_at_a_time(model, tok, prompts[:2], 4)  # warm-up
    generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)
    ref_out, t_ref = timed(lambda: one_at_a_time(model, tok, prompts, args.max_new_tokens))
    bat_out, t_bat = timed(lambda: generate(model, tok, prompts, max_new_tokens=args.max_new_tokens,
                                            batch_size=args.batch_size, progress=False))
    same = sum(a == b for a, b in zip(ref_out, bat_out))
    rows = {
        "one_at_a_time": {"seconds": round(t_ref, 3), "prompts_per_s": round(len(prompts) / t_ref, 3)},
        "batched": {"seconds": round(t_bat, 3), "prompts_per_s": round(len(prompts) / t_bat, 3),
                    "batch_size": args.batch_size},
    }
    result = {
        "benchmark": "generation_throughput", "device": args.device, "shape": args.shape,
        "model_config": SHAPES[args.shape], "dtype": str(dtype).replace("torch.", ""),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "prompts": len(prompts), "prompt_tokens_min_mean_max": [min(lengths), round(sum(lengths) / len(lengths), 1),
                                                                 max(lengths)],
        "max_new_tokens": args.max_new_tokens, "threads": args.threads, "results": rows,
        "speedup": round(t_ref / t_bat, 2), "identical_outputs": f"{same}/{len(prompts)}",
        "torch": torch.__version__, "platform": platform.platform(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
    }
    table = Table(title=f"greedy generation, {args.shape} Llama ({result['params_m']}M params), {args.device}, "
                        f"{len(prompts)} prompts x {args.max_new_tokens} new tokens")
    for col in ("engine", "seconds", "prompts/s"):
        table.add_column(col, justify="right" if col != "engine" else "left")
    table.add_row("one at a time (reference)", f"{t_ref:.2f}", f"{len(prompts) / t_ref:.2f}")
    table.add_row(f"asft batched (batch {args.batch_size})", f"{t_bat:.2f}", f"{len(prompts) / t_bat:.2f}")
    Console().print(table)
    print(f"speedup x{result['speedup']}; identical outputs {result['identical_outputs']}")
    out = Path(args.out) if args.out else HERE / "results" / f"generation_throughput_{args.device}_{args.shape}.json"
    write_json(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
