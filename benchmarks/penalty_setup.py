"""Start-up cost of the AsFT penalty on a CPU: building the 64 q/v operators of a Llama-2-7B anchor.

What training does before its first step, per module of 4096 x 4096 (float32 anchor V with a
power-law spectrum plus noise, like a real alignment direction):
  before   the largest eigenvalue of C by a full float64 SVD (torch.linalg.matrix_norm(ord=2)) and
           the Gram form G = (I - C)^2 built in float64 (what `asft train` did up to this version)
  now      `build_operator(entry, "reference")` as training calls it: the V form on a CPU (no d^3
           precomputation) and the eigenvalue by block subspace iteration (`top_singular_value`)
The "before" column is timed on --sample modules and scaled to --modules (it takes seconds per
module); "now" is timed on all --modules. Also reported: the eigenvalue estimate's relative error.

    python benchmarks/penalty_setup.py [--modules 64] [--dim 4096] [--sample 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.models.anchor import AnchorEntry  # noqa: E402
from asft.fileio import write_json  # noqa: E402
from asft.methods.regularizer import build_operator, gram_reference  # noqa: E402

HERE = Path(__file__).resolve().parent


def make_v(d: int, seed: int) -> torch.Tensor:
    """A d x d float32 direction: rank-64 power-law part (sigma_i ~ 1/i) plus small dense noise."""
    g = torch.Generator().manual_seed(seed)
    k = 64
    U = torch.randn(d, k, generator=g) / d**0.5
    W = torch.randn(k, d, generator=g) / d**0.5
    S = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
    return (U * S) @ W + 1e-3 * torch.randn(d, d, generator=g) / d**0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", type=int, default=64)
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--sample", type=int, default=2, help="modules timed the old way (scaled up)")
    ap.add_argument("--out", default=str(HERE / "results" / "penalty_setup.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    V = make_v(args.dim, 0)
    norm = float(torch.linalg.matrix_norm(V.double()))
    entries = [AnchorEntry(f"layers.{i}.proj", (args.dim, args.dim), norm, V=V) for i in range(args.modules)]

    t0 = time.perf_counter()
    ops = [build_operator(e, "reference") for e in entries]
    now_total = time.perf_counter() - t0

    old = []
    for e in entries[: args.sample]:
        t = time.perf_counter()
        exact = float(torch.linalg.matrix_norm(e.V.double(), ord=2) ** 2 / e.norm)
        gram_reference(e.V, e.norm)
        old.append(time.perf_counter() - t)
    old_total = sum(old) / len(old) * args.modules
    err = abs(ops[0].c_max_eig() - exact) / exact

    result = {"modules": args.modules, "dim": args.dim, "threads": torch.get_num_threads(),
              "torch": torch.__version__, "machine": platform.machine(), "kind": ops[0].kind,
              "now_seconds": round(now_total, 2), "before_seconds_scaled": round(old_total, 1),
              "before_seconds_per_module": round(sum(old) / len(old), 2),
              "speedup": round(old_total / now_total, 1), "c_max_eig": exact, "eig_rel_error": err}
    print(f"| {args.modules} modules of {args.dim}^2 | before: eig by float64 SVD + Gram | now: V form + "
          f"subspace iteration | ratio |\n|---|---|---|---|\n| set-up | {old_total:.1f} s "
          f"({result['before_seconds_per_module']:.2f} s/module, {args.sample} timed) | {now_total:.2f} s "
          f"| {result['speedup']}x |")
    print(f"largest eigenvalue of C {exact:.4g}, estimate's relative error {err:.1e}")
    write_json(args.out, result)
    print(json.dumps({"json": args.out}))


if __name__ == "__main__":
    main()
