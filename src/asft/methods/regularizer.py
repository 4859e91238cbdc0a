"""The AsFT penalty, exact and fast: ``lam * sum_modules ||(I - C) B A||_F^2``.

For a LoRA pair of one module, ``A`` is (r, d_in) and ``B`` is (d_out, r), so the update is
``dW = B A`` (d_out, d_in). ``C`` (d_out, d_out) is built from the module's alignment direction
``V = W_aligned - W_base`` (d_out, d_in). Forms:

``reference``  C = V V^T / ||V||_F, as in the public AsFT (and Safe LoRA) code. Default, because
               it is what the published numbers were produced with. Its eigenvalues are
               sigma_i^2 / ||V||_F, which can be far below 1: then (I - C) is close to I and the
               penalty is close to the ``l2`` control. ``asft anchor --inspect`` shows this.
``projector``  C = U_k U_k^T, the orthogonal projector onto the top-k left singular vectors of V.
               The paper writes C = V (V^T V)^-1 V^T; for a full-rank V that is the identity and
               the penalty vanishes, so a truncation to k < rank(V) is what makes it meaningful.
``scaled``     C = V V^T / sigma_max(V)^2: the reference form's C rescaled so that its largest
               eigenvalue is exactly 1 (the ablation: does the reference form fail only because its
               C is small?). Same operators as ``reference``, with sigma_max^2 for ||V||_F.
``zero``       C = 0: ``lam * ||B A||_F^2``, the penalty of the ``l2`` control every comparison needs.

Nothing here is ever d x d per step. With M = (I - C) B (d_out, r),
``||(I - C) B A||_F^2 = ||M A||_F^2 = sum((M^T M) * (A A^T))``, which costs
O(d_out r^2 + d_in r^2) once M is known; M costs
  - O(d_out d_in r) with a full V (``M = B - V (V^T B) / ||V||_F``), no precomputation;
  - O(d_out^2 r) with the Gram form G = (I - C)^T (I - C) (d_out, d_out, precomputed once):
    ``||(I - C) B A||^2 = sum((B^T G B) * (A A^T))``, with a hand-written backward that reuses
    G B, so forward + backward is a single such product; chosen when d_out <= d_in;
  - O(d_out k r) with k factors P (``M = B - P (P^T B)``): P = U_k for ``projector``,
    P = U_k S_k / sqrt(||V||_F) for ``reference`` with a rank-k anchor (then C ~ P P^T).
Everything is computed in float32, whatever the model's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import torch
from torch import nn

from asft.models.checkpoints import peft_module_name
from asft.errors import AsftError

if TYPE_CHECKING:
    from asft.models.anchor import Anchor, AnchorEntry

FORMS = ("reference", "projector", "scaled", "zero")  # zero: C = 0, the l2 control's penalty


# ----------------------------------------------------------------------------- plain functions

def _quad(M: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """||M A||_F^2 = sum((M^T M) * (A A^T)) for M (d_out, r), A (r, d_in); never forms M A."""
    return ((M.T @ M) * (A @ A.T)).sum()


def penalty_l2(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """||B A||_F^2 for A (r, d_in), B (d_out, r)."""
    return _quad(B, A)


def apply_full(B: torch.Tensor, V: torch.Tensor, norm: float) -> torch.Tensor:
    """C B for C = V V^T / norm, V (d_out, d_in), B (d_out, r); O(d_out d_in r), C never formed."""
    return V @ (V.T @ B) / norm


def apply_factors(B: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """C B for C = P P^T, P (d_out, k), B (d_out, r); O(d_out k r)."""
    return P @ (P.T @ B)


def penalty_full(A: torch.Tensor, B: torch.Tensor, V: torch.Tensor, norm: float) -> torch.Tensor:
    """||(I - V V^T / norm) B A||_F^2 for V (d_out, d_in); O(d_out d_in r)."""
    return _quad(B - apply_full(B, V, norm), A)


def penalty_factors(A: torch.Tensor, B: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """||(I - P P^T) B A||_F^2 for P (d_out, k); O(d_out k r)."""
    return _quad(B - apply_factors(B, P), A)


class _GramPenalty(torch.autograd.Function):
    """p = tr(B^T G B S), S = A A^T, for a symmetric G: forward and backward share the single
    O(d_out^2 r) product G B (autograd would compute a second one, G^T dOut, in backward)."""

    @staticmethod
    def forward(ctx, A, B, G):
        GB = G @ B                      # (d_out, r): the only product with d_out^2 in it
        S = A @ A.T                     # (r, r)
        Q = B.T @ GB                    # (r, r), symmetric
        ctx.save_for_backward(A, GB, S, Q)
        return (Q * S).sum()

    @staticmethod
    def backward(ctx, grad):
        A, GB, S, Q = ctx.saved_tensors
        # dp/dA = 2 Q A and dp/dB = 2 G B S, both from saved (r, r) and (d, r) factors.
        return 2 * grad * (Q @ A), 2 * grad * (GB @ S), None


def penalty_gram(A: torch.Tensor, B: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """sum((B^T G B) * (A A^T)) = ||(I - C) B A||_F^2 for G = (I - C)^T (I - C) (symmetric).
    One O(d_out^2 r) product per forward + backward."""
    return _GramPenalty.apply(A, B, G)


def gram_reference(V: torch.Tensor, norm: float) -> torch.Tensor:
    """G = (I - C)^2 for C = V V^T / norm (symmetric); computed in float64, returned in V's dtype."""
    V64 = V.double()
    IC = torch.eye(V.shape[0], dtype=torch.float64, device=V.device) - (V64 @ V64.T) / norm
    G = IC @ IC
    return ((G + G.T) / 2).to(V.dtype)  # exactly symmetric: the custom backward relies on it


def unknown_form(form: str) -> str:
    """The one-line refusal of a form name."""
    return f"unknown penalty form {form!r} (choose from {', '.join(FORMS)})"


# ----------------------------------------------------------------------------- per-module operator

@dataclass
class ModuleOperator:
    """What one module's penalty needs, precomputed once. Exactly one of the tensors is set
    (none for ``zero``): ``V`` + ``norm`` (full form, C = V V^T / norm: ||V||_F for ``reference``,
    sigma_max^2 for ``scaled``), ``G`` (Gram), ``P`` (factors)."""

    name: str
    kind: str  # "zero" | "full" | "gram" | "factors"
    V: torch.Tensor | None = None
    norm: float = 1.0
    G: torch.Tensor | None = None
    P: torch.Tensor | None = None
    c_max: float = 0.0  # largest eigenvalue of C, estimated once when the operator is built

    def penalty(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        if self.kind == "zero":
            return penalty_l2(A, B)
        if self.kind == "full":
            return penalty_full(A, B, self.V, self.norm)
        if self.kind == "gram":
            return penalty_gram(A, B, self.G)
        return penalty_factors(A, B, self.P)

    def c_times(self, B: torch.Tensor) -> torch.Tensor:
        """C B (d_out, r), for the forms that hold C's factors (not the Gram form, which holds
        only (I - C)^2); used by Safe LoRA's projection."""
        if self.kind == "zero":
            return torch.zeros_like(B)
        if self.kind == "full":
            return apply_full(B, self.V, self.norm)
        if self.kind == "factors":
            return apply_factors(B, self.P)
        raise ValueError("the Gram operator holds (I - C)^2, not C: build it with strategy='full'")

    def to(self, device: torch.device, dtype: torch.dtype = torch.float32) -> "ModuleOperator":
        for key in ("V", "G", "P"):
            t = getattr(self, key)
            if t is not None:
                setattr(self, key, t.to(device=device, dtype=dtype))
        return self

    def c_max_eig(self) -> float:
        """Largest eigenvalue of C (0 for l2, 1 for the projector form); tells how far the penalty
        is from plain L2 (near 0) and whether I - C is still a projector complement (<= 1)."""
        return self.c_max


def top_singular_value(M: torch.Tensor, q: int = 8, iters: int = 6) -> float:
    """sigma_1 of M (m, n) by block subspace iteration: ``iters`` passes of q vectors, then the
    exact singular values of the small projection. Converges like (sigma_{q+1}/sigma_1)^(2 iters)
    (relative error < 1e-3 on the tested spectra with a gap) and never overestimates; on a flat
    spectrum it lands inside the spread of the top singular values. Costs 2 iters + 1 products with M (a full SVD of a 4096^2 module in
    float64 takes seconds on a CPU; this, tens of milliseconds). Its own seeded generator: the
    training RNG stream is not touched."""
    if min(M.shape) <= 2 * q:
        return float(torch.linalg.svdvals(M.double())[0]) if M.numel() else 0.0
    gen = torch.Generator(device=M.device).manual_seed(0)
    X = torch.randn(M.shape[1], q, generator=gen, device=M.device, dtype=M.dtype)
    for _ in range(iters):
        Y, _ = torch.linalg.qr(M @ X)
        X, _ = torch.linalg.qr((Y.T @ M).T)  # = M^T Y; row-major M makes this 7x faster on CPU
    return float(torch.linalg.svdvals((M @ X).double())[0])


EXACT_SIGMA_MAX = 1024  # sigma_max by a full float64 SVD up to this min(d_out, d_in); above, by iteration


def sigma_max(V: torch.Tensor) -> float:
    """The largest singular value of V: exact (float64 SVD) for modules up to ``EXACT_SIGMA_MAX`` wide,
    else by block subspace iteration run to convergence (``top_singular_value``, 30 passes)."""
    if min(V.shape) <= EXACT_SIGMA_MAX:
        return float(torch.linalg.svdvals(V.double())[0]) if V.numel() else 0.0
    return top_singular_value(V, iters=30)


def build_operator(entry: "AnchorEntry", form: str, k: int | None = None,
                   energy: float | None = None, strategy: str = "auto",
                   dtype: torch.dtype | None = None) -> ModuleOperator:
    """Precompute one module's penalty operator from its anchor entry.

    strategy (reference form with a full V): ``auto`` picks the Gram form when d_out < d_in (GQA k/v
    projections: G is smaller than V) or, on a GPU, when d_out == d_in: one O(d_out^2 r) product
    per step, for a one-off O(d_out^2 d_in + d_out^3) float64 precomputation (about 340 steps' worth
    of the V form at d = 4096, r = 8; seconds per module on a CPU, so square modules on a CPU keep
    the V form and start at once); else the V form (4 products of O(d_out d_in r) per step, no
    precomputation). ``full`` / ``gram`` force one. The largest eigenvalue of C is estimated
    once (``top_singular_value``). Tensors are made in ``dtype``
    (default: the anchor's; derived ones are computed in float64 and rounded once);
    ``ModuleOperator.to`` makes them float32 on the training device.
    """
    if strategy not in ("auto", "full", "gram"):
        raise AsftError(f"unknown strategy {strategy!r} (auto, full, gram)")
    if form == "zero":
        return ModuleOperator(entry.name, "zero")
    if form == "projector":
        if k is None and energy is None:
            raise AsftError("the projector form needs a rank k (--proj-rank) or an energy fraction "
                            "(--proj-energy): with a full-rank V the untruncated projector is I")
        U, _ = entry.left_factors(k=k, energy=energy)
        return ModuleOperator(entry.name, "factors", P=U.to(dtype or U.dtype), c_max=1.0)
    if form not in ("reference", "scaled"):
        raise AsftError(unknown_form(form))
    if entry.norm <= 0:  # module untouched by alignment: C = V V^T / ||V||_F -> 0 as V -> 0
        return ModuleOperator(entry.name, "zero")
    # C = V V^T / denom: denom = ||V||_F (reference) or sigma_max(V)^2 (scaled, largest eigenvalue 1)
    if entry.V is None:  # rank-k anchor: C ~ P P^T with P = U_k S_k / sqrt(denom)
        U, S = entry.left_factors(k=k, energy=energy)
        top = float(S.double().max()) ** 2 if S.numel() else 0.0
        denom = entry.norm if form == "reference" else top
        P = U.double() * S.double() / math.sqrt(denom)  # rounded once, below
        return ModuleOperator(entry.name, "factors", P=P.to(dtype or U.dtype), c_max=top / denom)
    d_out, d_in = entry.V.shape
    if form == "reference":
        denom = float(entry.norm)
        c_max = top_singular_value(entry.V) ** 2 / denom
    else:
        denom, c_max = sigma_max(entry.V) ** 2, 1.0
    gram = strategy == "gram" or (strategy == "auto" and (
        d_out < d_in or (d_out == d_in and entry.V.device.type == "cuda")))
    if gram:
        G = gram_reference(entry.V, denom)
        return ModuleOperator(entry.name, "gram", G=G.to(dtype or G.dtype), c_max=c_max)
    return ModuleOperator(entry.name, "full", V=entry.V.to(dtype or entry.V.dtype), norm=denom, c_max=c_max)


# ----------------------------------------------------------------------------- over a PEFT model

def whole(p: torch.Tensor) -> torch.Tensor:
    """``p`` as one whole tensor. Under ``asft train --fsdp`` a LoRA weight is a DTensor holding this rank's
    rows: ``full_tensor()`` all-gathers it with its gradient path, so every rank computes the same whole
    penalty and the gather's backward gives each rank the gradient of its own rows. Else ``p`` itself."""
    from torch.distributed.tensor import DTensor

    return p.full_tensor() if isinstance(p, DTensor) else p


def lora_pairs(model: nn.Module, adapter: str = "default") -> dict[str, tuple[nn.Parameter, nn.Parameter, float]]:
    """{base module name: (A weight (r, d_in), B weight (d_out, r), scaling)} of a PEFT LoRA model."""
    pairs = {}
    for name, module in model.named_modules():
        lora_A = getattr(module, "lora_A", None)
        lora_B = getattr(module, "lora_B", None)
        if isinstance(lora_A, nn.ModuleDict) and adapter in lora_A:
            scaling = module.scaling[adapter] if hasattr(module, "scaling") else 1.0
            pairs[peft_module_name(name)] = (lora_A[adapter].weight, lora_B[adapter].weight, float(scaling))
    return pairs


class AsftPenalty(nn.Module):
    """``lam * sum ||(I - C) B A||_F^2`` over a PEFT model's LoRA pairs. Call it with no argument.

    The operators are tensors held here (not model buffers, so they are never saved in adapters)
    and moved to the LoRA weights' device once, at the first call.
    ``scale_by_lora``: penalise the update the model really applies, (alpha/r) B A; off by
    default to match the reference code.
    """

    def __init__(self, pairs: dict[str, tuple[nn.Parameter, nn.Parameter, float]],
                 operators: dict[str, ModuleOperator], lam: float = 1.0, scale_by_lora: bool = False):
        super().__init__()
        missing = sorted(set(pairs) - set(operators))
        if missing:
            raise AsftError(f"no anchor for LoRA module {missing[0]} ({len(missing)} missing); "
                            "compute the anchor with the same --targets as training")
        if not pairs:
            raise AsftError("the model has no LoRA modules to regularise")
        self.names = sorted(pairs)
        self.pairs = pairs
        self.operators = {n: operators[n] for n in self.names}
        self.lam = float(lam)
        self.scale_by_lora = scale_by_lora
        self._device: torch.device | None = None

    @classmethod
    def from_model(cls, model: nn.Module, anchor: "Anchor | None", form: str = "reference",
                   lam: float = 1.0, k: int | None = None, energy: float | None = None,
                   scale_by_lora: bool = False, adapter: str = "default",
                   strategy: str = "auto") -> "AsftPenalty":
        pairs = lora_pairs(model, adapter)
        if form == "zero":
            ops = {n: ModuleOperator(n, "zero") for n in pairs}
        else:
            if anchor is None:
                raise AsftError(f"form {form!r} needs an anchor file (--anchor)")
            ops = {}
            for n, (A, B, _) in pairs.items():
                entry = anchor.entries.get(n)
                if entry is None:
                    continue  # reported by __init__ as a missing anchor
                if tuple(entry.shape) != (B.shape[0], A.shape[1]):
                    raise AsftError(f"anchor module {n} has shape {tuple(entry.shape)} but the model's "
                                    f"weight is {(B.shape[0], A.shape[1])}")
                ops[n] = build_operator(entry, form, k=k, energy=energy, strategy=strategy)
        return cls(pairs, ops, lam=lam, scale_by_lora=scale_by_lora)

    def forward(self) -> torch.Tensor:
        A0 = whole(self.pairs[self.names[0]][0])
        # Each module's operator lives on that module's device (a model spread over devices with
        # device_map="auto" keeps its modules where they are); moved once, on the first call.
        if self._device != A0.device:
            for n in self.names:
                self.operators[n].to(self.pairs[n][0].device)
            self._device = A0.device
        # float32 whatever autocast a training loop runs under (bf16 would both lose the small
        # differences I - C is made of and mix dtypes in the Gram form's backward).
        with torch.autocast(A0.device.type, enabled=False):
            total = A0.new_zeros((), dtype=torch.float32)
            for n in self.names:
                A, B, scaling = self.pairs[n]
                p = self.operators[n].penalty(whole(A).float(), whole(B).float())
                total = total + (p * scaling**2 if self.scale_by_lora else p).to(total.device)
        return self.lam * total

    def spectrum(self) -> dict[str, float]:
        """Largest eigenvalue of C per module (0 for l2)."""
        return {n: self.operators[n].c_max_eig() for n in self.names}

    def scale_warning(self) -> str | None:
        """A sentence when C's largest eigenvalue exceeds 1 somewhere (reference form only):
        then I - C is no longer a projector complement, and above 2 an update along V is
        penalised MORE than by plain L2 (|1 - eig| > 1)."""
        over = {n: e for n, e in self.spectrum().items() if e > 1.0}
        if not over:
            return None
        worst = max(over, key=over.get)
        above2 = sum(e > 2.0 for e in over.values())
        return (f"the reference C = V V^T/||V||_F has eigenvalues above 1 in {len(over)} of "
                f"{len(self.names)} modules (largest {over[worst]:.3g}, {worst}): it is not scale-"
                f"invariant, so I - C is not a projector complement there"
                + (f", and in {above2} modules updates along V are penalised more than by plain L2"
                   if above2 else "") + "; consider --form projector")


def naive_penalty(pairs: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Reference formulation, for tests and benchmarks only: materialise I - C (d_out, d_out),
    multiply ``(I - C) @ B @ A`` and take the squared Frobenius norm. O(d^3) per module."""
    total = 0.0
    for A, B, C in pairs:
        I = torch.eye(C.shape[0], dtype=C.dtype, device=C.device)
        total = total + torch.linalg.matrix_norm((I - C) @ B @ A) ** 2
    return total
