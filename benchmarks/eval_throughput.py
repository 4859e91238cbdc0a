"""Evaluation speed: the reference's way, the previous engine and the current one, side by side.

On the same prompts (one suite of the paper's test sets, formatted as `asft eval` does), greedy, same
max_new_tokens and thread count, each engine in its own fresh process (so each has its own peak RSS):
  reference  one prompt at a time, `model.generate` (the public evaluation scripts' way); on the
             first --reference-limit prompts only (it is slow), compared on those
  previous   `generate_reference`: length-sorted batches of --old-batch through `model.generate`
             (every row computed until its whole batch has finished) = `asft eval` before this version
  current    `generate`: --batch rows in one KV cache, finished rows leave, waiting prompts join;
             AG News / SST-2 answers stop once their score is decided, as in `asft eval`
  current-bf16  (--bf16) the same in bfloat16: faster on CPUs with AVX-512-bf16 / AMX; its answers
             can differ, so the metric difference is reported
Prints a table (prompts/s, tokens/s, peak RSS, identical answers, metric) and writes JSON.

    python benchmarks/eval_throughput.py                      # tiny random Llama, CI-speed
    python benchmarks/eval_throughput.py --model ~/.cache/asft/models/smollm2-135m-instruct \\
        --suite harmful --data-dir ../shared/data/asft-reference/eval --template chat --bf16
    python benchmarks/eval_throughput.py --device cuda --model DIR   # on a GPU (1B-shaped random
        Llama when --model is "random-1b")
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HERE = Path(__file__).resolve().parent


def _model(spec: str, dtype: str, device: str):
    import torch

    if spec.startswith("random"):
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        shape = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4) if spec == "random-1b" else \
            dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2)
        cfg = LlamaConfig(vocab_size=260, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2,
                          pad_token_id=3, **shape)
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype)).to(device).eval()
        sys.path.insert(0, str(HERE.parent / "tests"))
        from _eval_tiny import byte_tokenizer

        return model, byte_tokenizer()
    from asft.models.modeling import load_model, load_tokenizer

    return load_model(spec, dtype=dtype, device=device).eval(), load_tokenizer(spec)


def _worker(engine: str, args: dict, prompts: list[str], q) -> None:
    try:
        q.put(_work(engine, args, prompts))
    except BaseException as e:  # never leave the parent waiting on the queue
        q.put({"error": f"{type(e).__name__}: {e}"})
        raise


def _work(engine: str, args: dict, prompts: list[str]) -> dict:
    import torch

    torch.set_num_threads(args["threads"])
    from asft.models.generate import generate, generate_reference

    dtype = "bfloat16" if engine == "current-bf16" else "float32"
    model, tok = _model(args["model"], dtype, args["device"])
    add = args["template"] != "chat"
    t0 = time.perf_counter()
    if engine == "reference":
        out = generate_reference(model, tok, prompts, args["max_new"], batch_size=1, add_special_tokens=add)
    elif engine == "previous":
        out = generate_reference(model, tok, prompts, args["max_new"], batch_size=args["old_batch"],
                                 add_special_tokens=add)
    else:  # as `asft eval` runs it: with the provable early stop of AG News / SST-2 answers
        from asft.evaluation.run import _decided

        decided = _decided(args["kind"], args["items"])
        stop = (lambda i, ids: decided(i, tok.decode(ids, skip_special_tokens=True))) if decided else None
        out = generate(model, tok, prompts, args["max_new"], batch_size=args["batch"], add_special_tokens=add,
                       progress=False, stop=stop)
    seconds = time.perf_counter() - t0
    tokens = sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in out)
    return {"engine": engine, "seconds": seconds, "outputs": out, "tokens": tokens,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(engine: str, args: dict, prompts: list[str], keep: Path | None) -> dict:
    """One engine in a fresh process; with ``keep``, a finished engine's result (outputs included)
    is saved there and reused by a rerun with the same settings and prompts."""
    from asft.fileio import content_hash, read_json, write_json

    used = {"model", "template", "max_new", "threads", "device"} | (
        {"old_batch"} if engine == "previous" else {"batch", "kind"} if engine.startswith("current") else set())
    key = content_hash({"engine": engine, "args": {k: v for k, v in args.items() if k in used}, "prompts": prompts})
    path = keep / f"{engine}-{key}.json" if keep else None
    if path is not None and path.is_file():
        print("  (reused)", flush=True)
        return read_json(path)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(engine, args, prompts, q))
    p.start()
    res = q.get()
    p.join()
    if "error" in res:
        raise SystemExit(f"{engine} failed: {res['error']}")
    if path is not None:
        write_json(path, res)
    return res


def _prompts(args) -> tuple[list[str], list[dict]]:
    if args.model.startswith("random"):
        import random

        rng = random.Random(0)
        items = [{"instruction": " ".join(rng.choice(["cat", "dog", "tell", "how", "why", "a", "the"])
                                          for _ in range(rng.randint(3, 40)))} for _ in range(args.limit or 48)]
        return [it["instruction"] for it in items], items
    from asft.data import format_prompt
    from asft.evaluation.run import load_suite
    from asft.models.modeling import load_tokenizer

    items = load_suite(args.suite, args.data_dir, args.limit)
    tok = load_tokenizer(args.model)
    return [format_prompt(it, args.template, tok) for it in items], items


def _metric(args, items: list[dict], outputs: list[str]) -> float | None:
    from asft.evaluation import metrics
    from asft.evaluation.run import suite_spec

    if args.model.startswith("random"):
        return None
    kind = suite_spec(args.suite).kind
    if kind == "harmful":
        from asft.evaluation.judges import KeywordJudge

        flags = KeywordJudge()([it["instruction"] for it in items], outputs)
        return metrics.percent(sum(v.flagged for v in flags), len(items))
    fn = {"agnews": metrics.agnews_correct, "sst2": metrics.sst2_correct}.get(kind)
    if fn is None:
        return None
    return metrics.percent(sum(fn(o, it["label"])[0] for o, it in zip(outputs, items)), len(items))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random-small", help="model folder, or random-small / random-1b")
    ap.add_argument("--suite", default="harmful")
    ap.add_argument("--data-dir", default=str(HERE.parents[1] / "shared" / "data" / "asft-reference" / "eval"))
    ap.add_argument("--template", default="chat")
    ap.add_argument("--limit", type=int, help="first N prompts of the suite (default all; 48 random)")
    ap.add_argument("--max-new", type=int, help="max new tokens (default: the suite's, 64 for random)")
    ap.add_argument("--reference-limit", type=int, default=8, help="prompts for the one-at-a-time engine")
    ap.add_argument("--old-batch", type=int, default=16, help="batch of the previous engine (its default)")
    ap.add_argument("--batch", type=int, default=64, help="batch of the current engine (its default)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true", help="also the current engine in bfloat16")
    ap.add_argument("--engines", nargs="+", default=["reference", "previous", "current"])
    ap.add_argument("--out", help="JSON path (default benchmarks/results/eval_throughput_<name>.json)")
    ap.add_argument("--keep", help="folder keeping each engine's raw result (outputs too): a rerun reuses them")
    args = ap.parse_args()
    from asft.evaluation.run import suite_spec

    max_new = args.max_new or (64 if args.model.startswith("random") else suite_spec(args.suite).max_new_tokens)
    prompts, items = _prompts(args)
    kind = "random" if args.model.startswith("random") else suite_spec(args.suite).kind
    shared = {"model": args.model, "template": args.template, "max_new": max_new, "threads": args.threads,
              "device": args.device, "old_batch": args.old_batch, "batch": args.batch, "kind": kind,
              "items": items}
    engines = args.engines + (["current-bf16"] if args.bf16 else [])
    results = {}
    for e in engines:
        sub = prompts[: args.reference_limit] if e == "reference" else prompts
        print(f"{e}: {len(sub)} prompts ...", flush=True)
        results[e] = _run(e, shared, sub, Path(args.keep) if args.keep else None)
        r = results[e]
        print(f"  {r['seconds']:.1f}s, {len(sub) / r['seconds']:.3f} prompts/s", flush=True)
    cur = results.get("current")
    rows = []
    for e, r in results.items():
        n = len(r["outputs"])
        same = None
        if cur is not None and e != "current":
            same = sum(a == b for a, b in zip(r["outputs"], cur["outputs"][:n]))
        sub_items = items[:n]
        rows.append({"engine": e, "prompts": n, "seconds": round(r["seconds"], 2),
                     "prompts_per_s": round(n / r["seconds"], 4), "tokens_per_s": round(r["tokens"] / r["seconds"], 2),
                     "peak_rss_mib": round(r["peak_rss_mib"]), "identical_to_current": same,
                     "metric": _metric(args, sub_items, r["outputs"]),
                     "metric_current_same_prompts": _metric(args, sub_items, cur["outputs"][:n]) if cur else None})
    base = {r["engine"]: r for r in rows}
    for r in rows:
        for other in ("reference", "previous"):
            if other in base and r["engine"].startswith("current"):
                r[f"speedup_vs_{other}"] = round(r["prompts_per_s"] / base[other]["prompts_per_s"], 2)
    name = Path(args.model).name if not args.model.startswith("random") else args.model
    out = Path(args.out or HERE / "results" / f"eval_throughput_{name}_{args.suite}_{args.device}.json")
    import platform

    import torch

    from asft.fileio import write_json

    doc = {"model": args.model, "suite": args.suite, "prompts": len(prompts), "max_new_tokens": max_new,
           "template": args.template, "threads": args.threads, "device": args.device, "torch": torch.__version__,
           "cpu": platform.processor() or platform.machine(), "rows": rows}
    write_json(out, doc)
    metric = "HS % (keyword)" if args.suite == "harmful" else "FA %"
    print(f"\n| engine | prompts | seconds | prompts/s | tokens/s | peak RSS MiB | identical to current | {metric} "
          f"(current on the same prompts) | speed-up |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        sp = ", ".join(f"{r[k]}x vs {k.split('_vs_')[1]}" for k in r if k.startswith("speedup_vs_"))
        ident = "-" if r["identical_to_current"] is None else f"{r['identical_to_current']}/{r['prompts']}"
        print(f"| {r['engine']} | {r['prompts']} | {r['seconds']} | {r['prompts_per_s']} | {r['tokens_per_s']} | "
              f"{r['peak_rss_mib']} | {ident} | {r['metric']} ({r['metric_current_same_prompts']}) | {sp or '-'} |")
    print(json.dumps({"json": str(out)}))


if __name__ == "__main__":
    main()
