"""Why the thread policy: LoRA training step time on a busy machine, torch's default threads vs ours.

Starts --busy CPU-bound background processes (plain Python loops, like other users' jobs on a
shared machine), then times `asft train` steps of a model (SmolLM2-135M by default; the tiny
test Llama with --model random) with torch's default thread count (all usable cores) and with
the policy's (`asft.runtime.thread_count()`: half the usable cores), alternating A B A B so that
both see the same load. Prints a table and writes JSON. The losses are compared too: the policy
must change speed only.

    python benchmarks/thread_policy.py [--model DIR] [--busy 2] [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

HERE = Path(__file__).resolve().parent


def _burn(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x = (x * 31 + 7) % 1000003


def _train(model: str, data: str, threads: int, steps: int, out: str) -> dict:
    """One `asft train` run in a fresh process with `--threads`; seconds per step from its summary."""
    cmd = [sys.executable, "-m", "asft", "train", "--model", model, "--data", data, "--out", out,
           "--method", "sft", "--template", "chat", "--max-steps", str(steps), "--batch-size", "4",
           "--max-length", "128", "--logging-steps", "1", "--lora-dropout", "0", "--overwrite", "--quiet",
           "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(HERE.parent / "src")}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((Path(out) / "train_summary.json").read_text())
    logs = [json.loads(x) for x in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    losses = [r["task_loss"] for r in logs if "task_loss" in r]
    return {"seconds_per_step": summary["seconds"] / summary["steps"], "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(Path.home() / ".cache" / "asft" / "models" / "smollm2-135m-instruct"))
    ap.add_argument("--data", default=str(HERE.parents[1] / "shared" / "data" / "asft-reference" / "train" / "SST2"
                                          / "SST2_1k_p_0.1.json"))
    ap.add_argument("--busy", type=int, default=2, help="background CPU-bound processes")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=str(HERE / "results" / "thread_policy.json"))
    args = ap.parse_args()
    import torch

    from asft.runtime import thread_count, usable_cores

    default, ours = torch.get_num_threads(), thread_count()
    stop_at = time.time() + 3600
    burners = [mp.Process(target=_burn, args=(stop_at,), daemon=True) for _ in range(args.busy)]
    for b in burners:
        b.start()
    time.sleep(2)
    results: dict[str, list[dict]] = {"default": [], "policy": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name, n in (("default", default), ("policy", ours)):
                    res = _train(args.model, args.data, n, args.steps, f"{tmp}/{name}{r}")
                    results[name].append(res)
                    print(f"round {r}: {name} ({n} threads): {res['seconds_per_step']:.2f} s/step "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)
    finally:
        for b in burners:
            b.terminate()
    med = {k: statistics.median(x["seconds_per_step"] for x in v) for k, v in results.items()}
    same = all(a["losses"] == b["losses"] for a, b in zip(results["default"], results["policy"]))
    doc = {"model": args.model, "cores": usable_cores(), "busy_processes": args.busy, "steps": args.steps,
           "threads": {"default": default, "policy": ours}, "seconds_per_step_median": med,
           "ratio_default_over_policy": round(med["default"] / med["policy"], 2), "identical_losses": same,
           "runs": results}
    from asft.fileio import write_json

    write_json(args.out, doc)
    print(f"\n| threads | s/step (median of {args.rounds}, {args.busy} busy processes on {usable_cores()} cores) |\n"
          f"|---|---|\n| torch default ({default}) | {med['default']:.2f} |\n| asft policy ({ours}) | {med['policy']:.2f} |")
    print(f"default / policy = {doc['ratio_default_over_policy']}x; identical losses: {same}")


if __name__ == "__main__":
    main()
