"""Safe LoRA (Hsu et al., NeurIPS 2024): project a trained LoRA adapter towards the alignment direction.

A post-hoc, training-free baseline. For each LoRA module, with the anchor V = W_aligned - W_base
(d_out, d_in) and the applied update dW = scaling * B A (d_out, d_in):

    C = V V^T / ||V||_F                           (d_out, d_out), the AsFT ``safelora`` form's C
    s = <dW, C dW>_F / (||dW||_F ||C dW||_F)      cosine similarity of the update and its projection
    s < threshold:  B <- C B                      (A unchanged, rank kept: the update becomes C dW)

``ratio=q`` replaces the threshold: the fraction q of modules with the lowest similarity is
projected (the reference code's "number" mode, given as a fraction). s >= 0 always (C is PSD).
Edge cases: dW = 0 has no similarity (None) and is never projected (C 0 = 0 anyway); a module
untouched by alignment (||V||_F = 0) has C = 0, so s = 0 and its update is removed.

Nothing d x d is formed: C B = V (V^T B) / ||V||_F (exact anchor) or P (P^T B) with
P = U_k S_k / sqrt(||V||_F) (rank-k anchor, C ~ P P^T), and every Frobenius product goes through
r x r Gram matrices, <X A, Y A>_F = sum((X^T Y) * (A A^T)). All of it in float64.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from asft.errors import AsftError

if TYPE_CHECKING:
    from asft.anchor import Anchor, AnchorEntry

DEFAULT_THRESHOLD = 0.5  # Safe LoRA paper/code for Llama-2


def project_b(entry: "AnchorEntry", B: torch.Tensor) -> torch.Tensor:
    """C B (d_out, r) in float64 for B (d_out, r), without forming C (d_out, d_out): the
    regulariser's safelora operator (V form, or factors for a rank-k anchor), applied to B."""
    from asft.regularizer import build_operator

    B = B.detach().to(torch.float64)
    op = build_operator(entry, "safelora", strategy="full", dtype=torch.float64)
    return op.to(B.device, torch.float64).c_times(B)


def update_stats(A: torch.Tensor, B: torch.Tensor, CB: torch.Tensor, scaling: float = 1.0) -> dict:
    """Similarity of dW = scaling B A and C dW = scaling (C B) A, and both Frobenius norms.

    A (r, d_in), B and CB (d_out, r). Returns {similarity (None if dW = 0), norm_before, norm_after}.
    """
    A, B, CB = (t.detach().to(torch.float64) for t in (A, B, CB))
    GA = A @ A.T  # (r, r)
    dd = max(float(((B.T @ B) * GA).sum()), 0.0)  # ||B A||^2
    cc = max(float(((CB.T @ CB) * GA).sum()), 0.0)  # ||C B A||^2
    dc = float(((B.T @ CB) * GA).sum())  # <B A, C B A>
    if dd == 0.0:
        sim = None
    elif cc == 0.0:
        sim = 0.0
    else:
        sim = dc / math.sqrt(dd * cc)
    s = abs(float(scaling))
    return {"similarity": sim, "norm_before": s * math.sqrt(dd), "norm_after": s * math.sqrt(cc)}


def _check_selection(threshold: float | None, ratio: float | None) -> None:
    if ratio is not None and not (0.0 <= ratio <= 1.0):
        raise AsftError(f"--ratio must be in [0, 1], got {ratio}")
    if ratio is None and (threshold is None or not math.isfinite(threshold)):
        raise AsftError(f"--threshold must be a finite number, got {threshold}")


def select(similarities: dict[str, float | None], threshold: float = DEFAULT_THRESHOLD,
           ratio: float | None = None) -> set[str]:
    """Names of the modules to project: similarity < threshold, or the round(ratio * n) lowest
    (ties by name; modules without a similarity never count)."""
    _check_selection(threshold, ratio)
    defined = {n: s for n, s in similarities.items() if s is not None}
    if ratio is None:
        return {n for n, s in defined.items() if s < threshold}
    k = min(int(math.floor(ratio * len(similarities) + 0.5)), len(defined))
    return set(sorted(defined, key=lambda n: (defined[n], n))[:k])


@torch.no_grad()
def safelora_project(model: nn.Module, anchor: "Anchor", threshold: float = DEFAULT_THRESHOLD,
                     ratio: float | None = None, adapter: str = "default") -> list[dict]:
    """Project the LoRA modules of a PEFT model in place (B <- C B where selected).

    Returns one row per module, in name order: {module, similarity, projected, norm_before,
    norm_after}, norms being ||scaling B A||_F before and after.
    """
    from asft.regularizer import lora_pairs

    _check_selection(threshold, ratio)
    cfg = getattr(model, "peft_config", {}).get(adapter)
    if cfg is not None and getattr(cfg, "use_dora", False):
        raise AsftError("Safe LoRA projects plain LoRA updates; this adapter uses DoRA")
    pairs = lora_pairs(model, adapter)
    if not pairs:
        raise AsftError(f"the model has no LoRA modules for adapter {adapter!r}")
    where = str(anchor.path) if anchor.path is not None else "anchor"
    projected_b, stats = {}, {}
    for name in sorted(pairs):
        A, B, scaling = pairs[name]
        entry = anchor.entries.get(name)
        if entry is None:
            raise AsftError(f"{where}: no anchor for LoRA module {name}; compute the anchor with the "
                            "adapter's target modules")
        if tuple(entry.shape) != (B.shape[0], A.shape[1]):
            raise AsftError(f"{where}: module {name} has shape {tuple(entry.shape)} but the model's "
                            f"weight is {(B.shape[0], A.shape[1])}")
        projected_b[name] = project_b(entry, B)
        stats[name] = update_stats(A, B, projected_b[name], scaling)
    chosen = select({n: s["similarity"] for n, s in stats.items()}, threshold, ratio)
    rows = []
    for name, st in stats.items():
        B = pairs[name][1]
        if name in chosen:
            B.copy_(projected_b[name].to(B.dtype))
        else:
            st["norm_after"] = st["norm_before"]
        rows.append({"module": name, "similarity": st["similarity"], "projected": name in chosen,
                     "norm_before": st["norm_before"], "norm_after": st["norm_after"]})
    return rows


def safelora_adapter(model_dir: str | os.PathLike, adapter_dir: str | os.PathLike,
                     anchor_path: str | os.PathLike, out_dir: str | os.PathLike,
                     threshold: float = DEFAULT_THRESHOLD, ratio: float | None = None,
                     overwrite: bool = False, dtype: str = "auto", device=None) -> list[dict]:
    """Apply Safe LoRA to a saved adapter and save the projected adapter to ``out_dir``.

    Writes ``out_dir/adapter_model.safetensors`` + ``adapter_config.json`` (PEFT, loadable on
    ``model_dir``) and ``out_dir/safelora.json`` (settings and the per-module rows, also returned).
    """
    from asft.anchor import check_anchor_matches, load_anchor
    from asft.fileio import write_json
    from asft.modeling import load_adapter, load_model
    from asft.train import _save_adapter

    _check_selection(threshold, ratio)
    out = Path(out_dir)
    if out.resolve() == Path(adapter_dir).resolve():
        raise AsftError(f"{out}: is the input adapter; write the projected adapter to another folder")
    if (out / "adapter_model.safetensors").exists() and not overwrite:
        raise AsftError(f"{out}: already holds an adapter (pass --overwrite to replace it)")
    anchor = load_anchor(anchor_path)
    check_anchor_matches(anchor, model_dir)  # fingerprint: before loading a large model
    model = load_adapter(load_model(model_dir, dtype=dtype, device=device), adapter_dir, trainable=True)
    rows = safelora_project(model, anchor, threshold=threshold, ratio=ratio)
    out.mkdir(parents=True, exist_ok=True)
    _save_adapter(model, out)
    write_json(out / "safelora.json", {
        "method": "safelora",
        "model": str(model_dir), "adapter": str(adapter_dir), "anchor": str(anchor_path),
        "threshold": None if ratio is not None else threshold, "ratio": ratio,
        "modules": len(rows), "projected": sum(r["projected"] for r in rows),
        "rows": rows,
    })
    return rows
