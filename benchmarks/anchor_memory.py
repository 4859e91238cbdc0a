"""Peak memory of computing an anchor: `asft anchor` (streaming) vs loading both models whole.

Writes two random Llama checkpoints of about --size-gb each (bf16, --shards safetensors shards,
aligned = base + small noise) into a temporary folder, then runs each variant in its own
subprocess and reads that process's peak resident set size (VmHWM, i.e. ru_maxrss):

  import   python + torch + transformers + asft imported, nothing computed (the floor)
  asft     `asft anchor --base B --aligned A --out F` (default targets q_proj, v_proj; exact V)
  whole    from_pretrained(base) and from_pretrained(aligned), V = W_aligned - W_base for the same
           modules, saved with safetensors (what the reference implementation does). transformers 5
           memory-maps same-dtype safetensors lazily, so only the pages it touches become resident;
  whole+read  the same after reading every weight once (as moving the models to a device or
           running them does), i.e. both models resident

    python benchmarks/anchor_memory.py [--size-gb 1.0] [--shards 4] [--out benchmarks/results/anchor_memory.json]

Goal: peak RSS of `asft` below one shard pair plus the anchor, independent of the model size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Child-process bodies. Each prints one JSON line with its own peak RSS as the last stdout line.
_PEAK = """
import json, resource, sys
def _peak_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024
"""

CHILD = {
    "import": _PEAK + """
import torch, transformers, safetensors, asft.models.anchor, asft.cli.anchor
print(json.dumps({"peak_rss_mb": _peak_mb()}))
""",
    "asft": _PEAK + """
import contextlib, io
from asft.cli import main
base, aligned, out = sys.argv[1:4]
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(["anchor", "--base", base, "--aligned", aligned, "--out", out, "--overwrite"])
assert rc == 0, rc
print(json.dumps({"peak_rss_mb": _peak_mb()}))
""",
    "whole": _PEAK + """
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
base, aligned, out = sys.argv[1:4]
mb = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
ma = AutoModelForCausalLM.from_pretrained(aligned, dtype=torch.bfloat16)
if sys.argv[4] == "read":  # make every weight resident, as using the models (or .to(device)) does
    with torch.no_grad():
        for p in [*mb.parameters(), *ma.parameters()]:
            p.sum()
pb, pa = dict(mb.named_parameters()), dict(ma.named_parameters())
V = {n[: -len(".weight")] + ".V": (pa[n].float() - pb[n].float()).contiguous()
     for n in pa if n.endswith(("q_proj.weight", "v_proj.weight"))}
save_file(V, out)
print(json.dumps({"peak_rss_mb": _peak_mb()}))
""",
}


def llama_config(size_gb: float, bytes_per_param: int = 2):
    """A Llama-2-like shape (GQA 16 heads / 4 kv heads) with as many layers as fit in size_gb."""
    from transformers import LlamaConfig

    h, inter, vocab, kv = 2048, 5504, 32000, 512
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * inter + 2 * h
    fixed = 2 * vocab * h + h
    layers = max(1, round((size_gb * 1e9 / bytes_per_param - fixed) / per_layer))
    return LlamaConfig(
        hidden_size=h, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=16,
        num_key_value_heads=4, vocab_size=vocab, tie_word_embeddings=False, dtype="bfloat16",
    )


def write_pair(root: Path, size_gb: float, shards: int, seed: int = 0) -> tuple[Path, Path, dict]:
    """Random bf16 base and aligned (= base + N(0, 1e-3^2)) checkpoints, one shard in memory at a time."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    cfg = llama_config(size_gb)
    with torch.device("meta"):  # names and shapes only, no memory
        shapes = {n: tuple(p.shape) for n, p in LlamaForCausalLM(cfg).state_dict().items()}
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    groups: list[list[str]] = [[]]
    acc = 0
    for n, s in shapes.items():  # split into `shards` consecutive groups of about equal bytes
        if acc >= total * len(groups) / shards and len(groups) < shards:
            groups.append([])
        groups[-1].append(n)
        acc += 2 * torch.Size(s).numel()
    base, aligned = root / "base", root / "aligned"
    gen = torch.Generator().manual_seed(seed)
    for d in (base, aligned):
        d.mkdir(parents=True)
        cfg.save_pretrained(d)
    weight_map = {}
    for i, names in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        shard = {
            n: (torch.ones(shapes[n]) if len(shapes[n]) == 1 else 0.02 * torch.randn(shapes[n], generator=gen)).to(torch.bfloat16)
            for n in names
        }
        save_file(shard, base / fname, metadata={"format": "pt"})
        del shard
        shard = load_file(base / fname)
        for n, t in shard.items():
            shard[n] = (t.float() + 1e-3 * torch.randn(t.shape, generator=gen)).to(torch.bfloat16)
        save_file(shard, aligned / fname, metadata={"format": "pt"})
        del shard
        weight_map.update({n: fname for n in names})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for d in (base, aligned):
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    shard_sizes = [(base / f).stat().st_size for f in sorted(set(weight_map.values()))]
    info = {
        "layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "params": total // 2,
        "model_bytes": total, "shards": len(groups), "largest_shard_bytes": max(shard_sizes),
    }
    return base, aligned, info


def run_child(kind: str, *argv: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD[kind], *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"variant {kind!r} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["wall_s"] = round(wall, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gb", type=float, default=1.0, help="size of each random model (default 1.0)")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--workdir", help="where to write the models (default: a temporary folder, deleted)")
    ap.add_argument("--out", default=str(HERE / "results" / "anchor_memory.json"))
    args = ap.parse_args(argv)

    sys.path.insert(0, str(HERE.parent / "src"))
    from rich.console import Console
    from rich.table import Table

    from asft.fileio import write_json

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="asft-anchor-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        base, aligned, info = write_pair(root, args.size_gb, args.shards)
        console.print(f"wrote two {info['model_bytes'] / 1e9:.2f} GB models ({info['layers']} layers, "
                      f"{info['shards']} shards) in {time.perf_counter() - t0:.0f} s")
        results = {"import": run_child("import")}
        results["asft"] = run_child("asft", str(base), str(aligned), str(root / "asft.safetensors"))
        results["whole"] = run_child("whole", str(base), str(aligned), str(root / "whole.safetensors"), "lazy")
        results["whole_read"] = run_child("whole", str(base), str(aligned), str(root / "whole.safetensors"), "read")
        anchor_bytes = (root / "asft.safetensors").stat().st_size

        from safetensors.torch import load_file

        a, w = load_file(root / "asft.safetensors"), load_file(root / "whole.safetensors")
        same = all(k in w and bool((a[k] == w[k]).all()) for k in a if k.endswith(".V"))
        del a, w

    mb = 2**20
    budget = (2 * info["largest_shard_bytes"] + anchor_bytes) / mb
    floor = results["import"]["peak_rss_mb"]
    table = Table(title=f"peak RSS computing a q_proj,v_proj anchor from two {info['model_bytes'] / 1e9:.2f} GB bf16 models")
    for col in ("variant", "peak RSS (MiB)", "above import floor (MiB)", "wall (s)"):
        table.add_column(col, justify="right" if col != "variant" else "left")
    for kind, label in (("import", "imports only"), ("asft", "asft anchor (streaming)"), ("whole", "from_pretrained both (lazy mmap)"),
                        ("whole_read", "from_pretrained both, weights read")):
        r = results[kind]
        table.add_row(label, f"{r['peak_rss_mb']:.0f}", f"{r['peak_rss_mb'] - floor:.0f}", f"{r['wall_s']:.1f}")
    console.print(table)
    verdict = results["asft"]["peak_rss_mb"] < budget
    console.print(
        f"one shard pair + anchor = {budget:.0f} MiB (anchor file {anchor_bytes / mb:.0f} MiB); "
        f"asft peak {results['asft']['peak_rss_mb']:.0f} MiB -> goal {'met' if verdict else 'NOT met'}; "
        f"anchors identical to the whole-model result: {same}",
        highlight=False,
    )
    write_json(args.out, {
        "model": info, "anchor_bytes": anchor_bytes, "budget_mb": budget, "results": results,
        "goal_met": verdict, "anchors_identical": same,
        "python": platform.python_version(), "platform": platform.platform(),
    })
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
