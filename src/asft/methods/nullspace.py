"""``nullspace`` (GuardSpace, arXiv 2510.14301; AlphaEdit's projector): LoRA on ``P x``.

P = U_k U_k^T projects each module's input onto the directions the safety demonstrations barely use:
the eigenvectors of S = X^T X / n (``asft.methods.anchors``) whose eigenvalue is below
``--null-threshold`` times the largest (AlphaEdit keeps eigenvalues below an absolute 2e-2 of an
unnormalised covariance; a relative threshold does not depend on the activations' scale). Then
``B A P x = 0`` for the inputs the refusals run through, whatever B and A learn.

Training keeps A = A P exactly, which is LoRA on P x (A' P with A' free) for any elementwise
optimiser: A starts as A P, its gradient is projected (g P) and after every optimiser update A is
projected again (AdamW's per-coordinate step leaves the subspace). The gradient P receives is then
the reparametrised one, and the adapter on disk is an ordinary PEFT adapter with P folded into A,
which PEFT and ``asft merge`` load as they are. No penalty; cost per step: one (r, d_in) x (d_in, d_in)
product per module.
"""

from __future__ import annotations

from asft.errors import AsftError
from asft.methods.base import Method, register_method


def null_projector(S, threshold: float, name: str = "module"):
    """P (d_in, d_in) onto the eigenvectors of the symmetric ``S`` with eigenvalue < threshold * the
    largest, and how many there are. None of them (a threshold too strict) is an error."""
    import torch

    w, U = torch.linalg.eigh(S.double())
    keep = w < threshold * w.max()
    k = int(keep.sum())
    if k == 0:
        raise AsftError(f"nullspace: module {name}: no input direction has safety-data variance below "
                        f"{threshold:g} x the largest, so LoRA could change nothing (raise --null-threshold)")
    Uk = U[:, keep]
    return Uk @ Uk.T, k


class NullSpaceHook:
    """Keeps every LoRA A in its module's null space: A <- A P at the start and after each optimiser
    update, gradients g <- g P."""

    def __init__(self, pairs: dict, projectors: dict, kept: dict[str, int]):
        import torch

        self.params, self.P, self.kept = [], [], kept
        for name, (A, B, _) in pairs.items():
            P = projectors[name].to(A.device, A.dtype)
            with torch.no_grad():
                A.copy_(A @ P)
            A.register_hook(lambda g, P=P: g @ P.to(g.dtype))
            self.params.append(A)
            self.P.append(P)

    def after_optimizer_step(self) -> None:
        import torch

        with torch.no_grad():
            for A, P in zip(self.params, self.P):
                A.copy_(A @ P)

    def summary(self) -> dict:
        dims = list(self.kept.values())
        return {"null_dims_min": min(dims), "null_dims_max": max(dims), "null_dims": self.kept}


class NullSpace(Method):
    name = "nullspace"
    label = "nullspace"
    order = 82
    help = "LoRA on P x, P onto the input directions --safety-data barely uses (--null-threshold)"
    marker = "v"
    needs_safety_data = True
    default_safety_n = 100
    shardable = False  # projects whole LoRA weights
    fsdp = "its optimiser hook projects whole LoRA weights, not made under sharding yet"

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if not 0 < cfg.null_threshold < 1:
            raise AsftError(f"--null-threshold must be in (0, 1), got {cfg.null_threshold}")

    def build_hook(self, cfg, model, tokenizer, args, batches_per_epoch: int) -> NullSpaceHook:
        from asft.methods.anchors import draw_safety, safety_statistics
        from asft.methods.regularizer import lora_pairs

        records = draw_safety(cfg, self.default_safety_n)
        stats = safety_statistics(model, tokenizer, cfg, records)
        projectors, kept = {}, {}
        for name, s in stats.items():
            projectors[name], kept[name] = null_projector(s["in"], cfg.null_threshold, name)
        return NullSpaceHook(lora_pairs(model), projectors, kept)

    def describe_penalty(self, cfg: dict) -> str:
        return f"LoRA on the null space of {cfg.get('safety_data')} (threshold {cfg.get('null_threshold')})"


NULLSPACE = register_method(NullSpace())
