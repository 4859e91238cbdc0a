"""What the data-derived anchors compute from the aligned model once, at start-up.

The weight-space anchor V = W_aligned - W_base does not tell a harmful update from a useful one
(AsFT equals the l2 control; "Safety Subspaces are Not Distinct", arXiv 2505.14185). These methods
anchor on safety *data* instead (``--safety-data``: harmful requests answered with refusals):

- ``act-anchor``, ``nullspace``: per LoRA module, the input second moment ``S = X^T X / n`` of the
  module's inputs X (n, d_in) over the non-padding positions of the safety demonstrations;
- ``fisher-anchor``: also ``S_g = G^T G / n``, G (n, d_out) the gradients of the demonstrations'
  refusal loss (summed over response tokens) with respect to the module's output (K-FAC factors);
- ``hidden-anchor``, ``kl-anchor``: reference hidden states / log-probabilities (their own modules).

Statistics are taken with the adapter disabled (the aligned model itself) in float64, written to
``OUT/anchor_stats.safetensors`` with the key of what they were computed from (model folder, drawn
records, template, length, modules), and read back instead of recomputed when the key matches
(``--resume``, a rerun). ``S`` is normalised to trace d_in and ``S_g`` to trace d_out, so that S = I
(S_g = I) is exactly the l2 control's penalty.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asft.errors import AsftError
from asft.methods.regularizer import lora_pairs

STATS_FILE = "anchor_stats.safetensors"


# ----------------------------------------------------------------------------- the safety records

def draw_safety(cfg, default_n: int | None) -> list[dict]:
    """The safety records a data anchor uses: ``cfg.safety_n`` (else ``default_n``; None: all) drawn
    from ``cfg.safety_data`` with SafeInstr's seeded draw, so that at the same seed and n a data anchor
    and SafeInstr use the same demonstrations (the data-equal comparison)."""
    from asft.data import load_records
    from asft.methods.safeinstr import mix_safety

    records = load_records(cfg.safety_data)
    n = default_n if cfg.safety_n is None else cfg.safety_n
    if n is None or (cfg.safety_n is None and n >= len(records)):
        return list(records)
    if n < 1:
        raise AsftError(f"--safety-n must be >= 1 for method {cfg.method}, got {n}")
    if n > len(records):
        raise AsftError(f"{cfg.safety_data}: {n} safety records asked for (--safety-n), the file has {len(records)}")
    return mix_safety([], records, n, cfg.seed)


def encode_batches(records: list[dict], tokenizer: Any, template: str, max_length: int,
                   batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
    """Prompt + response of each record, tokenised as in training (labels on the response), in
    right-padded batches, in the records' order."""
    from asft.batches import PadCollator, SupervisedDataset

    ds = SupervisedDataset(records, tokenizer, template, max_length)
    collate = PadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    return [collate([ds[i] for i in range(s, min(s + batch_size, len(ds)))]) for s in range(0, len(ds), batch_size)]


def encode_prompts(records: list[dict], tokenizer: Any, template: str, max_length: int) -> dict[str, torch.Tensor]:
    """The prompts alone (what generation starts from), right-padded: ``input_ids``, ``attention_mask``
    (K, T) and ``last`` (K,), the index of each prompt's last token."""
    from asft.data import encode_prompt, format_prompt

    ids = [encode_prompt(tokenizer, format_prompt(r, template, tokenizer), template)[-max_length:] for r in records]
    T = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), T), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for k, i in enumerate(ids):
        input_ids[k, : len(i)] = torch.tensor(i)
        mask[k, : len(i)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "last": mask.sum(1) - 1}


# ----------------------------------------------------------------------------- module statistics

def lora_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{module name as in ``lora_pairs``: the LoRA layer's frozen ``base_layer``}."""
    from asft.models.checkpoints import peft_module_name

    return {peft_module_name(name): m.base_layer for name, m in model.named_modules()
            if isinstance(getattr(m, "lora_A", None), nn.ModuleDict) and hasattr(m, "base_layer")}


@contextlib.contextmanager
def aligned_eval(model: nn.Module):
    """``model`` (PEFT) as the aligned model in evaluation mode: its adapter disabled, no dropout; the
    training mode it had is restored on leaving."""
    was_training = model.training
    model.eval()
    try:
        with model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext():
            yield model
    finally:
        model.train(was_training)


def module_statistics(model: nn.Module, batches: list[dict], outputs: bool = False) -> dict[str, dict]:
    """Per LoRA module: ``{"in": X^T X (d_in, d_in), "out": G^T G (d_out, d_out) or None, "n": n}``
    summed (float64) over the non-padding positions of ``batches``, on the aligned model (adapter
    disabled). G: the gradients of the batch's summed response-token cross-entropy with respect to
    the module's output (only with ``outputs``; one backward per batch, no weight gradient)."""
    modules = lora_modules(model)
    if not modules:
        raise AsftError("the model has no LoRA modules to anchor")
    stats = {n: {"in": None, "out": None, "n": 0} for n in modules}
    mask_now: list[torch.Tensor] = []
    handles = []

    def capture(name):
        def hook(module, args, out):
            x = args[0]
            keep = mask_now[0].to(x.device).reshape(-1).bool()
            X = x.detach().reshape(-1, x.shape[-1])[keep].double()
            s = stats[name]
            s["in"] = X.T @ X if s["in"] is None else s["in"] + X.T @ X
            s["n"] += int(X.shape[0])
            if outputs and out.requires_grad:
                def grad_hook(g, name=name, keep=keep):
                    G = g.reshape(-1, g.shape[-1])[keep].double()
                    s = stats[name]
                    s["out"] = G.T @ G if s["out"] is None else s["out"] + G.T @ G
                out.register_hook(grad_hook)
        return hook

    for name, m in modules.items():
        handles.append(m.register_forward_hook(capture(name)))
    embedded: list[torch.Tensor] = []

    def start_graph(module, args, out):  # the frozen model's activations need a graph for their gradients
        embedded.append(out.requires_grad_(True))

    if outputs:
        handles.append(model.get_input_embeddings().register_forward_hook(start_graph))
    device = next(model.parameters()).device
    try:
        with aligned_eval(model):
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                mask_now[:] = [batch["attention_mask"]]
                embedded.clear()
                with torch.set_grad_enabled(outputs), torch.autocast(device.type, enabled=False):
                    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
                    if outputs:
                        logits = out.logits[:, :-1].float()
                        labels = batch["labels"][:, 1:]
                        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                                           ignore_index=-100, reduction="sum")
                        torch.autograd.grad(loss, embedded)  # fills the output hooks; no weight gradient
    finally:
        for h in handles:
            h.remove()
    for name, s in stats.items():
        if s["in"] is None or s["n"] == 0:
            raise AsftError(f"LoRA module {name} saw no input on the safety data")
        if outputs and s["out"] is None:
            raise AsftError(f"LoRA module {name} got no gradient from the safety data's refusal loss")
    return stats


def normalised(M: torch.Tensor) -> torch.Tensor:
    """``M`` scaled to trace = its dimension (the identity's trace): S = I is then the l2 control."""
    tr = float(torch.trace(M))
    if not tr > 0:
        raise AsftError("a safety-data second moment has zero trace (the module's input or output is always zero)")
    return M * (M.shape[0] / tr)


def _stats_key(cfg, records: list[dict], names: list[str], outputs: bool) -> str:
    from asft.fileio import content_hash
    from asft.models.checkpoints import folder_identity

    return content_hash({"model": folder_identity(cfg.model), "records": content_hash(records),
                         "template": cfg.template, "max_length": cfg.max_length, "modules": sorted(names),
                         "outputs": outputs, "version": 1})


def safety_statistics(model: nn.Module, tokenizer: Any, cfg, records: list[dict], outputs: bool = False,
                      log=None) -> dict[str, dict[str, torch.Tensor]]:
    """{module: {"in": S (d_in, d_in), "out": S_g or absent}}, each normalised (``normalised``), float64 on
    the CPU: read from ``OUT/anchor_stats.safetensors`` when its key matches, else computed
    (``module_statistics``) and written there (temporary file + rename)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from asft.fileio import atomic_path

    names = sorted(lora_pairs(model))
    key = _stats_key(cfg, records, names, outputs)
    path = Path(cfg.out) / STATS_FILE if cfg.out else None
    if path is not None and path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("key") == key:
                got: dict[str, dict[str, torch.Tensor]] = {}
                for t in f.keys():
                    name, part = t.rsplit(".", 1)
                    got.setdefault(name, {})[part] = f.get_tensor(t)
                return got
    raw = module_statistics(model, encode_batches(records, tokenizer, cfg.template, cfg.max_length), outputs)
    stats = {n: {"in": normalised(s["in"] / s["n"])} for n, s in raw.items()}
    if outputs:
        for n, s in raw.items():
            stats[n]["out"] = normalised(s["out"] / s["n"])
    if path is not None and _main_process():
        tensors = {f"{n}.{part}": t.contiguous() for n, parts in stats.items() for part, t in parts.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": key, "records": str(len(records)),
                                                   "positions": json.dumps({n: s["n"] for n, s in raw.items()})})
    if log:
        log(f"anchor statistics of {len(stats)} modules from {len(records)} safety records -> {path}")
    return stats


def _main_process() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


# ----------------------------------------------------------------------------- the K-FAC penalty

class DataAnchorPenalty(nn.Module):
    """``lam * sum_modules tr(B^T S_g B . A S A^T)`` = ``lam * sum sum((B^T S_g B) * (A S A^T))`` over a
    PEFT model's LoRA pairs; A (r, d_in), B (d_out, r), S (d_in, d_in), S_g (d_out, d_out) or None (= I).

    With S = X^T X / n: ``tr(B^T B A S A^T) = ||B A X^T||_F^2 / n``, the update's size on the safety
    inputs (act-anchor); with S_g too, the K-FAC estimate of the refusal loss's curvature along the
    update (fisher-anchor); S = S_g = I is ``||B A||_F^2``, the l2 control. Cost per call: O(r d_in^2 +
    r d_out^2) (S_g), no forward pass. Computed in float32.
    """

    def __init__(self, pairs: dict[str, tuple[nn.Parameter, nn.Parameter, float]],
                 stats: dict[str, dict[str, torch.Tensor]], lam: float = 1.0, scale_by_lora: bool = False):
        super().__init__()
        missing = sorted(set(pairs) - set(stats))
        if not pairs:
            raise AsftError("the model has no LoRA modules to regularise")
        if missing:
            raise AsftError(f"no safety statistics for LoRA module {missing[0]}")
        self.names = sorted(pairs)
        self.pairs = pairs
        self.S = {n: stats[n]["in"] for n in self.names}
        self.Sg = {n: stats[n].get("out") for n in self.names}
        self.lam = float(lam)
        self.scale_by_lora = scale_by_lora
        self._device = None

    def forward(self) -> torch.Tensor:
        from asft.methods.regularizer import whole  # sharded (--fsdp) weights, all-gathered with their gradient

        A0 = whole(self.pairs[self.names[0]][0])
        if self._device != A0.device:  # moved once, to each module's device
            for n in self.names:
                dev = self.pairs[n][0].device
                self.S[n] = self.S[n].to(dev, torch.float32)
                if self.Sg[n] is not None:
                    self.Sg[n] = self.Sg[n].to(dev, torch.float32)
            self._device = A0.device
        with torch.autocast(A0.device.type, enabled=False):
            total = A0.new_zeros((), dtype=torch.float32)
            for n in self.names:
                A, B, scaling = self.pairs[n]
                A, B = whole(A).float(), whole(B).float()
                left = B.T @ B if self.Sg[n] is None else B.T @ (self.Sg[n] @ B)   # (r, r)
                p = (left * (A @ self.S[n] @ A.T)).sum()
                total = total + (p * scaling**2 if self.scale_by_lora else p).to(total.device)
        return self.lam * total


class PenaltyHook:
    """The trainer hook of a data anchor: its training-time term (``penalty``) and what it reports."""

    def __init__(self, penalty: DataAnchorPenalty, summary: dict):
        self.penalty = penalty
        self._summary = summary

    def summary(self) -> dict:
        return self._summary


# ----------------------------------------------------------------------------- per-step anchors

def rotation(step: int, batch: int, total: int) -> list[int]:
    """The records an optimiser update ``step`` anchors on: ``batch`` consecutive ones of ``total``,
    moving on by ``batch`` per update (every record once per ceil(total / batch) updates). A function of
    the step alone, so that a resumed run and every data-parallel process pick the same ones."""
    return [(step * batch + j) % total for j in range(min(batch, total))]


def decoder_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   layers: list[int]) -> list[torch.Tensor]:
    """Hidden states (B, T, d) of the decoder body at ``layers`` (indices into the model's
    ``hidden_states``: 0 the embeddings, -1 the last, normalised output), without the output layer: a
    49k-word (SmolLM2) or 262k-word (Gemma 3) vocabulary at every position would cost more than the body."""
    from asft.models.modeling import causal_lm

    lm = causal_lm(model)
    body = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model
    out = body(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
    return [out.hidden_states[i] for i in layers]
