"""Anchor size and penalty memory for real model shapes (computed, nothing downloaded), and what a
rank-k anchor (`asft anchor --rank K`) costs in accuracy on a real anchor.

Part 1, per model (q_proj and v_proj of every layer, float32 as asft stores and applies them):
  anchor file    exact V (d_out x d_in per module) or rank-k factors (k (d_out + d_in + 1))
  penalty        what training holds on the device per form: the V form (d_out x d_in), the Gram
                 form G = (I - C)^2 (d_out x d_out), the rank-k factors P (d_out x k)
Part 2, on a real anchor (default: the SmolLM2 pair of scripts/real-pair.sh), for random LoRA updates
  M = B A (r 8): the relative error of the rank-k penalty sum_m ||(I - C_k) M||^2 against the exact
  one, and the share of ||V||_F^2 the k directions hold.

    python benchmarks/anchor_sizes.py [--anchor runs/smollm2-pair/anchor.safetensors] [--ranks 1 8 32 128]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.fileio import write_json  # noqa: E402

HERE = Path(__file__).resolve().parent
F32 = 4
# (layers, q_proj (d_out, d_in), v_proj (d_out, d_in)) from the models' configs
SHAPES = {
    "Llama-2-7B": (32, (4096, 4096), (4096, 4096)),
    "Llama-2-13B": (40, (5120, 5120), (5120, 5120)),
    "Llama-3-8B": (32, (4096, 4096), (1024, 4096)),
    "Llama-2-70B": (80, (8192, 8192), (1024, 8192)),
}


def sizes(k: int = 64) -> list[dict]:
    rows = []
    for name, (layers, q, v) in SHAPES.items():
        mods = [q, v] * layers
        gib = lambda n: round(n * F32 / 2**30, 3)  # noqa: E731
        exact = sum(o * i for o, i in mods)
        rows.append({"model": name, "modules": len(mods),
                     "anchor_exact_gib": gib(exact), f"anchor_rank{k}_gib": gib(sum(k * (o + i + 1) for o, i in mods)),
                     "penalty_v_form_gib": gib(exact), "penalty_gram_gib": gib(sum(o * o for o, _ in mods)),
                     "penalty_auto_gib": gib(sum(o * o if o < i else o * i for o, i in mods)),
                     f"penalty_rank{k}_gib": gib(sum(o * k for o, _ in mods))})
    return rows


def rank_error(anchor_path: Path, ranks: list[int], trials: int = 4) -> dict:
    from asft.models.anchor import load_anchor

    anchor = load_anchor(anchor_path)
    g = torch.Generator().manual_seed(0)
    out = {"anchor": str(anchor_path), "modules": len(anchor.entries), "ranks": {}}
    exact_total, l2_total, approx = 0.0, 0.0, {k: 0.0 for k in ranks}
    energy = {k: [] for k in ranks}
    for name, e in anchor.entries.items():
        V = e.V.double()
        norm = float(e.norm)
        U, S, _ = torch.linalg.svd(V, full_matrices=False)
        for _ in range(trials):
            M = (torch.randn(V.shape[0], 8, generator=g, dtype=torch.float64)
                 @ torch.randn(8, V.shape[1], generator=g, dtype=torch.float64))
            CM = V @ (V.T @ M) / norm
            exact_total += float((M - CM).pow(2).sum())
            l2_total += float(M.pow(2).sum())
            for k in ranks:
                Uk, Sk = U[:, :k], S[:k]
                CkM = Uk @ ((Sk**2)[:, None] * (Uk.T @ M)) / norm
                approx[k] += float((M - CkM).pow(2).sum())
        for k in ranks:
            energy[k].append(float((S[:k] ** 2).sum() / (S**2).sum()))
    for k in ranks:
        out["ranks"][k] = {"rel_error": abs(approx[k] - exact_total) / exact_total,
                           "energy_min": min(energy[k]), "energy_median": sorted(energy[k])[len(energy[k]) // 2]}
    # the anchor's whole effect: the exact penalty against plain l2 (C = 0) on the same updates
    out["exact_vs_l2_rel"] = abs(l2_total - exact_total) / exact_total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchor", default="runs/smollm2-pair/anchor.safetensors")
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--out", default=str(HERE / "results" / "anchor_sizes.json"))
    args = ap.parse_args()
    rows = sizes()
    print("| model | q/v modules | anchor exact GiB | anchor rank-64 GiB | penalty: V form | Gram | auto | rank-64 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['modules']} | {r['anchor_exact_gib']} | {r['anchor_rank64_gib']} | "
              f"{r['penalty_v_form_gib']} | {r['penalty_gram_gib']} | {r['penalty_auto_gib']} | {r['penalty_rank64_gib']} |")
    doc = {"sizes": rows}
    path = Path(args.anchor)
    if path.is_file():
        res = rank_error(path, args.ranks)
        doc["rank_error"] = res
        print(f"\nrank-k anchor on {path} ({res['modules']} modules, random r=8 updates):")
        print("| k | rel. error of the penalty | share of ||V||^2 (min / median over modules) |\n|---|---|---|")
        for k, v in res["ranks"].items():
            print(f"| {k} | {v['rel_error']:.2e} | {v['energy_min']:.3f} / {v['energy_median']:.3f} |")
        print(f"| (C = 0, the l2 control) | {res['exact_vs_l2_rel']:.2e} | 0 |")
    else:
        print(f"\n(no anchor at {path}: part 2 skipped)")
    write_json(args.out, doc)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
