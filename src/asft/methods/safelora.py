"""Safe LoRA (Hsu et al., NeurIPS 2024): project a trained LoRA adapter towards the alignment direction.

A post-hoc, training-free baseline. For each LoRA module, with the anchor V = W_aligned - W_base
(d_out, d_in) and the applied update dW = scaling * B A (d_out, d_in):

    C = V V^T / ||V||_F                           (d_out, d_out), the AsFT ``reference`` form's C
    s = <dW, C dW>_F / (||dW||_F ||C dW||_F)      cosine similarity of the update and its projection
    selected:       B <- C B                      (A unchanged, rank kept: the update becomes C dW)

Selection, as the authors' code (similarities rounded to 5 decimals first):
  ``number`` (default): the ``num`` modules with the lowest similarity, i.e. every module with
      round(s, 5) <= the num-th smallest (ties included). The reference projects 10 of
      Llama-2-7B's 64 q/v modules; for other models ``num`` defaults to the same share,
      round(10/64 * n), at least 1 (``default_num``).
  ``threshold``: every module with round(s, 5) <= threshold (0.5 in the reference config).
s >= 0 always (C is PSD).
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

from asft.errors import AsftError
from asft.methods.base import Method, register_method

if TYPE_CHECKING:  # torch is imported where it is used: the method registry stays light
    import torch
    from torch import nn

    from asft.models.anchor import Anchor, AnchorEntry

DEFAULT_THRESHOLD = 0.5  # Safe LoRA paper/code for Llama-2


def project_b(entry: "AnchorEntry", B: torch.Tensor) -> torch.Tensor:
    """C B (d_out, r) in float64 for B (d_out, r), without forming C (d_out, d_out): the
    regulariser's reference-form operator (V form, or factors for a rank-k anchor), applied to B."""
    import torch

    from asft.methods.regularizer import build_operator

    B = B.detach().to(torch.float64)
    op = build_operator(entry, "reference", strategy="full", dtype=torch.float64)
    return op.to(B.device, torch.float64).c_times(B)


def update_stats(A: torch.Tensor, B: torch.Tensor, CB: torch.Tensor, scaling: float = 1.0) -> dict:
    """Similarity of dW = scaling B A and C dW = scaling (C B) A, and both Frobenius norms.

    A (r, d_in), B and CB (d_out, r). Returns {similarity (None if dW = 0), norm_before, norm_after}.
    """
    import torch

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


SELECT_MODES = ("number", "threshold")
REFERENCE_SHARE = 10 / 64  # the reference projects 10 of Llama-2-7B's 64 q_proj/v_proj modules


def default_num(n_modules: int) -> int:
    """The reference's share of projected modules for a model with ``n_modules`` LoRA modules."""
    return max(1, round(REFERENCE_SHARE * n_modules))


def _check_selection(mode: str, threshold: float, num: int | None) -> None:
    if mode not in SELECT_MODES:
        raise AsftError(f"unknown Safe LoRA selection {mode!r} (choose from {', '.join(SELECT_MODES)})")
    if mode == "threshold" and (threshold is None or not math.isfinite(threshold)):
        raise AsftError(f"--threshold must be a finite number, got {threshold}")
    if mode == "number" and num is not None and num < 0:
        raise AsftError(f"--num must be >= 0, got {num}")


def select(similarities: dict[str, float | None], mode: str = "number", threshold: float = DEFAULT_THRESHOLD,
           num: int | None = None) -> set[str]:
    """Names of the modules to project, as the authors' code chooses them (module docstring).
    Modules without a similarity (a zero update) are never projected and do not count."""
    _check_selection(mode, threshold, num)
    rounded = {n: round(s, 5) for n, s in similarities.items() if s is not None}
    if mode == "number":
        k = min(default_num(len(similarities)) if num is None else num, len(rounded))
        if k == 0:
            return set()
        threshold = sorted(rounded.values())[k - 1]
    return {n for n, s in rounded.items() if s <= threshold}


def safelora_project(model: nn.Module, anchor: "Anchor", mode: str = "number",
                     threshold: float = DEFAULT_THRESHOLD, num: int | None = None,
                     adapter: str = "default") -> list[dict]:
    """Project the LoRA modules of a PEFT model in place (B <- C B where selected).

    Returns one row per module, in name order: {module, similarity, projected, norm_before,
    norm_after}, norms being ||scaling B A||_F before and after.
    """
    import torch

    with torch.no_grad():
        return _project(model, anchor, mode, threshold, num, adapter)


def _project(model, anchor, mode, threshold, num, adapter) -> list[dict]:
    from asft.methods.regularizer import lora_pairs

    _check_selection(mode, threshold, num)
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
    chosen = select({n: s["similarity"] for n, s in stats.items()}, mode, threshold, num)
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
                     mode: str = "number", threshold: float = DEFAULT_THRESHOLD, num: int | None = None,
                     overwrite: bool = False, dtype: str = "auto", device=None) -> list[dict]:
    """Apply Safe LoRA to a saved adapter and save the projected adapter to ``out_dir``.

    Writes ``out_dir/adapter_model.safetensors`` + ``adapter_config.json`` (PEFT, loadable on
    ``model_dir``) and ``out_dir/safelora.json`` (settings and the per-module rows, also returned).
    """
    from asft.models.anchor import check_anchor_matches, load_anchor
    from asft.fileio import check_output, output_lock, write_json
    from asft.models.modeling import load_adapter, load_model, save_adapter

    _check_selection(mode, threshold, num)
    out = check_output(out_dir)
    if out.resolve() == Path(adapter_dir).resolve():
        raise AsftError(f"{out}: is the input adapter; write the projected adapter to another folder")
    if (out / "adapter_model.safetensors").exists() and not overwrite:
        raise AsftError(f"{out}: already holds an adapter (pass --overwrite to replace it)")
    with output_lock(out, "asft safelora"):
        anchor = load_anchor(anchor_path)
        check_anchor_matches(anchor, model_dir)  # fingerprint: before loading a large model
        model = load_adapter(load_model(model_dir, dtype=dtype, device=device), adapter_dir, trainable=True)
        rows = safelora_project(model, anchor, mode=mode, threshold=threshold, num=num)
        out.mkdir(parents=True, exist_ok=True)
        save_adapter(model, out)
        write_json(out / "safelora.json", {
            "method": SafeLoRA.name,
            "model": str(model_dir), "adapter": str(adapter_dir), "anchor": str(anchor_path),
            "select": mode, "threshold": threshold if mode == "threshold" else None,
            "num": (default_num(len(rows)) if num is None else num) if mode == "number" else None,
            "modules": len(rows), "projected": sum(r["projected"] for r in rows),
            "rows": rows,
        })
    return rows


class SafeLoRA(Method):
    name = "safelora"
    label = "Safe LoRA"
    paper_name = "Safe LoRA"
    order = 20
    help = "Safe LoRA: the plain run's adapter projected towards the alignment direction (post hoc)"
    marker = "D"
    needs_anchor = True
    post_hoc = True
    # selection as the authors' code (``select``): the num lowest-similarity modules, or a threshold
    options = {"select": "number", "num": None, "threshold": DEFAULT_THRESHOLD}

    def post_hoc_adapter(self, model, source, anchor, out, select="number", num=None, threshold=DEFAULT_THRESHOLD):
        return safelora_adapter(model, source, anchor, out, mode=select, threshold=threshold, num=num, overwrite=True)


SAFELORA = register_method(SafeLoRA())
