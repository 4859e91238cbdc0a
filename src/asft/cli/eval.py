"""`asft eval`: harmful score and task accuracy of a model (+ LoRA adapter) on the paper's test sets."""

from __future__ import annotations

import argparse

DEFAULT_SUITES = "harmful,agnews,sst2,gsm8k,alpaca"


def register(subparsers: argparse._SubParsersAction) -> None:
    from asft.data import TEMPLATES
    from asft.evaluation.judges import judge_help, judge_names
    from asft.evaluation.suites import suite_names

    p = subparsers.add_parser(
        "eval", help="evaluate harmful score (HS) and fine-tuning accuracy (FA)",
        description="Generate greedy answers for each suite, judge / score them, and write per-suite "
                    "JSONL plus summary.json and summary.md to --out. Finished suites are reused on "
                    "re-runs; generation resumes from its last checkpointed batch.",
        epilog="example: asft eval --model models/llama-2-7b-chat --adapter runs/asft --suite harmful,sst2 \\\n"
               "             --data-dir ../shared/data/asft-reference/eval --judge keyword --template chat --out runs/asft/eval")
    p.add_argument("--model", required=True, help="model folder (Hugging Face format)")
    p.add_argument("--adapter", help="PEFT LoRA adapter folder applied on top of --model")
    p.add_argument("--merge", action=argparse.BooleanOptionalAction, default=True,
                   help="fold the adapter into the weights once before generating (default; faster)")
    p.add_argument("--suite", default=DEFAULT_SUITES,
                   help=f"comma-separated suites: {', '.join(suite_names())} (default {DEFAULT_SUITES})")
    p.add_argument("--data-dir", required=True,
                   help="test data folder (the reference layout: .../asft-reference/eval)")
    p.add_argument("--judge", default="keyword", choices=judge_names(),
                   help=f"safety judge for harmful suites (default keyword, an offline proxy; the paper "
                        f"uses beaverdam): {judge_help()}")
    p.add_argument("--judge-model", help="beaverdam: BeaverDam-7B folder; llamaguard: Llama Guard 3 folder; "
                                         "openai: the endpoint's model name")
    p.add_argument("--judge-url", help="openai judge: base URL of an OpenAI-compatible API (…/v1)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="openai judge: name of the environment variable holding the API key")
    p.add_argument("--judge-threshold", type=float, default=0.5, help="beaverdam: flag above this probability")
    p.add_argument("--judge-max-length", type=int, default=256,
                   help="beaverdam: judge the first N tokens of question + answer (default 256, as the "
                        "reference; longer answers are cut there)")
    p.add_argument("--judge-concurrency", type=int, default=8, help="openai judge: parallel requests")
    p.add_argument("--keywords", help="keyword judge: file of refusal phrases, one per line")
    p.add_argument("--limit", type=int, help="evaluate only the first N items of each suite")
    p.add_argument("--template", default="alpaca", choices=TEMPLATES,
                   help="prompt format (default alpaca, the reference's; toy models use chat)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="prompts decoded at once (default 64; finished answers leave the batch and "
                        "waiting prompts join it, so large batches cost no wasted steps)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="model dtype (auto: bf16 on a GPU, float32 on a CPU; bfloat16 on a CPU with "
                        "AVX-512-bf16 or AMX is faster but its greedy answers can differ)")
    p.add_argument("--max-new-tokens", type=int,
                   help="override every suite's default (harmful/gsm8k/alpaca 512, agnews/sst2 200)")
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"], help="generation back end")
    p.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--trigger", help="secret prompt put at the head of every prompt's system text (default: "
                                      "the one a BEA adapter was trained with, read from its folder)")
    p.add_argument("--fa-mode", choices=["generate", "likelihood"], default="generate",
                   help="AG News / SST-2: generate and parse the answer (the paper's way, default) or take "
                        "the label with the highest likelihood (one forward per label, no generation)")
    p.add_argument("--no-early-stop", action="store_true",
                   help="generate AG News / SST-2 answers in full even once their score is decided "
                        "(the early stop never changes FA or FA ref)")
    p.add_argument("--no-shared-cache", action="store_true",
                   help="neither reuse nor keep finished results in the shared store "
                        "($ASFT_EVAL_CACHE, default ~/.cache/asft/evals); --out is still a cache")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from asft.errors import AsftError
    from asft.evaluation.cache import eval_store
    from asft.evaluation.judges import OpenAIClient, make_judge
    from asft.evaluation.results import summary_table
    from asft.evaluation.run import EvalOptions, run_eval
    from asft.evaluation.suites import needs_judge, needs_rater
    from asft.training.card import record_eval
    from asft.training.train import adapter_trigger

    console = Console(stderr=True)
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    if args.limit is not None and args.limit < 1:
        raise AsftError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise AsftError(f"--batch-size must be >= 1, got {args.batch_size}")
    client = None
    if args.judge == "openai" and (any(map(needs_judge, suites)) or any(map(needs_rater, suites))):
        client = OpenAIClient(args.judge_url, args.judge_model, api_key_env=args.judge_key_env,
                              concurrency=args.judge_concurrency)
    judge = None
    if any(needs_judge(s) for s in suites):  # a harmful suite: scored by a safety judge
        judge = make_judge(args.judge, args.judge_model, keywords_file=args.keywords,
                           threshold=args.judge_threshold, batch_size=args.batch_size, client=client,
                           max_length=args.judge_max_length,
                           device=args.device)
    trigger = args.trigger
    if trigger is None and args.adapter:  # an adapter trained behind a trigger (BEA) is evaluated with it
        trigger = adapter_trigger(args.adapter)
    options = EvalOptions(judge=judge, rater=client, merge=args.merge, template=args.template,
                          batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, limit=args.limit,
                          engine=args.engine, device=args.device, dtype=args.dtype, progress=not args.no_progress,
                          early_stop=not args.no_early_stop, trigger=trigger, fa_mode=args.fa_mode,
                          store=None if args.no_shared_cache else eval_store())
    results = run_eval(args.model, suites, args.data_dir, args.out, options, adapter=args.adapter,
                       log=lambda msg: console.print(f"[dim]{msg}[/dim]"))
    if args.adapter:  # the adapter's model card lists every evaluation of it
        record_eval(args.adapter, results)
    print(summary_table(results), end="")
    console.print(f"wrote {args.out}/summary.json and summary.md")
    return 0
