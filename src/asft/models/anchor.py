"""The alignment direction V = W_aligned - W_base, per target weight matrix: compute, store, load.

AsFT keeps LoRA updates ``B A`` close to the direction the alignment step moved the weights in. That
direction is ``V = W_aligned - W_base`` for each targeted linear layer (``q_proj`` and ``v_proj`` by
default). ``build_anchor`` streams the two checkpoints tensor by tensor (memory: a few tensors,
never two models) and writes one safetensors file. Per module ``M``:

    M.V     (d_out, d_in) float32     exact anchor (no --rank), or
    M.U     (d_out, K), M.S (K,), M.Vh (K, d_in)   truncated SVD of V (--rank K)
    M.norm  ()  float32               ||V||_F of the FULL V (the reference form divides by it)

plus string metadata (format "asft-anchor", version, targets, rank, modules, shapes, fingerprints).
``load_anchor`` returns an ``Anchor`` of ``AnchorEntry`` objects for the regulariser.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from asft.models.checkpoints import (ModelFolder, SafetensorsWriter, check_pair, fingerprint, folder_identity,
                              read_lora_adapter)
from asft.errors import AsftError
from asft.fileio import atomic_path

FORMAT = "asft-anchor"
VERSION = "1"
DEFAULT_TARGETS = ("q_proj", "v_proj")
# Full (exact) SVD up to this smallest dimension; beyond it, randomized svd_lowrank for small K.
FULL_SVD_MAX_DIM = 4096
# inspect_anchor's verdict threshold on the largest eigenvalue of the reference C = V V^T / ||V||_F.
NEAR_ZERO_EIG = 0.5

Targets = Sequence[str] | str


# --------------------------------------------------------------------------------------------
# Targets


def parse_targets(targets: Targets) -> list[str] | str:
    """Normalise a target spec to a list of module-name suffixes, or a regex string ``"re:..."``.

    Accepts ``("q_proj", "v_proj")``, ``"q_proj,v_proj"`` or ``"re:.*layers\\.[0-3]\\..*_proj"``.
    The list form is exactly what PEFT's ``target_modules`` takes; the regex form is PEFT's string
    form (``re.fullmatch`` against the module name) once the ``re:`` prefix is dropped.
    """
    if isinstance(targets, str):
        if targets.startswith("re:"):
            pattern = targets[3:]
            try:
                re.compile(pattern)
            except re.error as e:
                raise AsftError(f"invalid target regex {pattern!r}: {e}") from None
            return targets
        targets = targets.split(",")
    out = [t.strip() for t in targets if t.strip()]
    if not out:
        raise AsftError("no target modules given")
    return out


def match_targets(module_names: Sequence[str], targets: Targets) -> list[str]:
    """The module names selected by ``targets``: a name matches a suffix ``s`` when it equals ``s``
    or ends with ``"." + s``; a regex must match the whole name."""
    spec = parse_targets(targets)
    if isinstance(spec, str):
        rx = re.compile(spec[3:])
        return [m for m in module_names if rx.fullmatch(m)]
    return [m for m in module_names if any(m == s or m.endswith("." + s) for s in spec)]


def _natural_key(name: str) -> list:
    # "layers.10" after "layers.9": order is the model's, and independent of how shards split it.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def target_modules(folder: ModelFolder, targets: Targets) -> list[str]:
    """Modules of ``folder`` (names of 2-D ``*.weight`` tensors minus ``.weight``) matching ``targets``."""
    modules = [n[: -len(".weight")] for n in folder.tensor_names() if n.endswith(".weight") and len(folder.shape(n)) == 2]
    return sorted(match_targets(modules, targets), key=_natural_key)


# --------------------------------------------------------------------------------------------
# In-memory anchor (what the regulariser uses)


@dataclass
class AnchorEntry:
    """The anchor of one linear layer: V = W_aligned - W_base, exact or as a truncated SVD."""

    name: str  # module name, e.g. "model.layers.0.self_attn.q_proj"
    shape: tuple[int, int]  # (d_out, d_in)
    norm: float  # ||V||_F of the full V
    V: torch.Tensor | None = None  # (d_out, d_in) float32, exact anchors
    U: torch.Tensor | None = None  # (d_out, K) low-rank anchors
    S: torch.Tensor | None = None  # (K,) descending
    Vh: torch.Tensor | None = None  # (K, d_in)
    _left: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def exact(self) -> bool:
        return self.V is not None

    def _all_left(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (d_out, r), S (r,)): all stored factors, or the thin SVD of V (computed once)."""
        if self.U is not None:
            return self.U, self.S
        if self._left is None:
            U, S, _ = torch.linalg.svd(self.V.float(), full_matrices=False)
            self._left = (U, S)
        return self._left

    def singular_values(self) -> torch.Tensor:
        """(r,) singular values, descending: stored ones, or those of V."""
        if self.S is not None:
            return self.S
        if self._left is not None:
            return self._left[1]
        return torch.linalg.svdvals(self.V.float())

    def left_factors(self, k: int | None = None, energy: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_k (d_out, k), S_k (k,)): top-k left singular vectors and values of V.

        From the stored factors, or from an SVD of V (computed once, cached). ``energy``: the
        smallest k whose sum_{i<=k} S_i^2 / ||V||_F^2 >= energy. Neither: all available factors.
        """
        if k is not None and energy is not None:
            raise AsftError(f"{self.name}: give the anchor rank k or an energy fraction, not both")
        U, S = self._all_left()
        if energy is not None:
            if not 0 < energy <= 1:
                raise AsftError(f"{self.name}: energy must be in (0, 1], got {energy}")
            # Exact: the SVD holds all of V's energy (divide by its own total so energy=1 is reachable);
            # low rank: measure against the full ||V||_F^2 so a too-small stored rank is noticed.
            cum = torch.cumsum(S.double() ** 2, 0)
            total = float(cum[-1]) if self.exact else float(self.norm) ** 2
            if total == 0:
                return U[:, :0], S[:0]  # V = 0: no direction to keep
            hit = torch.nonzero(cum / total >= energy - 1e-6)
            if len(hit) == 0:
                raise AsftError(
                    f"{self.name}: the stored rank-{len(S)} anchor holds {float(cum[-1]) / total:.3f} of "
                    f"||V||^2, less than the requested energy {energy}; recompute it with a larger --rank"
                )
            k = int(hit[0]) + 1
        if k is None:
            k = len(S)
        if not 1 <= k <= len(S):
            raise AsftError(f"{self.name}: asked for the top {k} singular vectors, the anchor has {len(S)}")
        return U[:, :k], S[:k]

    def to(self, device) -> "AnchorEntry":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return AnchorEntry(self.name, self.shape, self.norm, move(self.V), move(self.U), move(self.S), move(self.Vh))


@dataclass
class Anchor:
    """All anchor entries, keyed by module name, with the file's metadata."""

    entries: dict[str, AnchorEntry]
    metadata: dict
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        kind = "exact" if all(e.exact for e in self.entries.values()) else f"rank {self.metadata.get('rank')}"
        return f"Anchor({len(self.entries)} modules, {kind}, path={str(self.path) if self.path else None!r})"


@dataclass
class AnchorFile:
    """What ``build_anchor`` produced: where it is and a per-module summary.

    With ``out`` the tensors went straight to disk (``anchor`` is None; ``load()`` reads them);
    without ``out`` they are kept in memory in ``anchor``.
    """

    path: Path | None
    metadata: dict[str, str]
    shapes: dict[str, tuple[int, int]]
    norms: dict[str, float]
    anchor: Anchor | None = None

    @property
    def modules(self) -> list[str]:
        return list(self.shapes)

    def load(self, device=None) -> Anchor:
        if self.anchor is not None:
            return self.anchor if device is None else Anchor(
                {n: e.to(device) for n, e in self.anchor.entries.items()}, self.anchor.metadata, None
            )
        return load_anchor(self.path, device=device)


# --------------------------------------------------------------------------------------------
# Computing


def _truncated_svd(V: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k SVD of V (d_out, d_in): exact LAPACK SVD unless V is large and k small."""
    if min(V.shape) <= FULL_SVD_MAX_DIM or 4 * k > min(V.shape):
        U, S, Vh = torch.linalg.svd(V, full_matrices=False)
        return U[:, :k].contiguous(), S[:k].contiguous(), Vh[:k].contiguous()
    # Randomized with oversampling and power iterations: accurate for the leading k directions.
    q = min(k + 16, min(V.shape))
    U, S, Vr = torch.svd_lowrank(V, q=q, niter=6)
    return U[:, :k].contiguous(), S[:k].contiguous(), Vr[:, :k].T.contiguous()


def _specs(modules: list[str], shapes: dict[str, tuple[int, int]], rank: int | None) -> list[tuple[str, torch.dtype, tuple]]:
    """The tensors an anchor file holds, in file order (the streaming writer declares them first)."""
    f32 = torch.float32
    specs = []
    for m in modules:
        d_out, d_in = shapes[m]
        if rank is None:
            specs.append((f"{m}.V", f32, (d_out, d_in)))
        else:
            k = min(rank, d_out, d_in)
            specs += [(f"{m}.U", f32, (d_out, k)), (f"{m}.S", f32, (k,)), (f"{m}.Vh", f32, (k, d_in))]
        specs.append((f"{m}.norm", f32, ()))
    return specs


def _anchor_tensors(
    base: ModelFolder, aligned: ModelFolder, modules: list[str], rank: int | None, progress: bool
) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Yield ``(module, {tensor name: tensor})`` one module at a time, in ``_specs`` order."""
    it: Iterator[str] = iter(modules)
    if progress:
        from rich.progress import track

        it = track(modules, description="anchor", transient=True)
    for m in it:
        w = f"{m}.weight"
        # float32 difference: bf16/fp16 subtraction would lose most of a small alignment update.
        V = aligned.get_tensor(w).float() - base.get_tensor(w).float()  # (d_out, d_in)
        norm = torch.linalg.matrix_norm(V).reshape(())
        if rank is None:
            yield m, {f"{m}.V": V, f"{m}.norm": norm}
        else:
            k = min(rank, *V.shape)
            U, S, Vh = _truncated_svd(V, k)
            yield m, {f"{m}.U": U, f"{m}.S": S, f"{m}.Vh": Vh, f"{m}.norm": norm}
        del V


def build_anchor(
    base_dir: str | os.PathLike,
    aligned_dir: str | os.PathLike,
    targets: Targets = DEFAULT_TARGETS,
    rank: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> AnchorFile:
    """Compute V = W_aligned - W_base for every target module, streaming one tensor at a time.

    targets: module-name suffixes (``("q_proj", "v_proj")``, ``"q_proj,v_proj"``) or a regex
        ``"re:PATTERN"`` fully matching module names; only 2-D ``.weight`` tensors are considered.
    rank: None stores V exactly; K stores its truncated SVD (U, S, Vh) with K = min(K, d_out, d_in).
    out: safetensors path, written atomically (no partial file on error); refused if it exists
        unless ``overwrite``. None keeps the tensors in memory (``AnchorFile.anchor``).
    """
    if rank is not None and rank < 1:
        raise AsftError(f"--rank must be a positive integer, got {rank}")
    if out is not None:
        from asft.fileio import check_output

        check_output(out, folder=False)
        if not overwrite and Path(out).exists():
            raise AsftError(f"{out}: output exists (pass --overwrite to replace it)")
    aligned = ModelFolder(aligned_dir)
    if (Path(base_dir) / "adapter_config.json").is_file():  # the unaligned side as a LoRA adapter
        base = AdapterSide(aligned, base_dir)
    else:
        base = ModelFolder(base_dir)
        if base.path.resolve() == aligned.path.resolve():
            raise AsftError(f"{aligned.path}: the aligned model is the base model (V would be zero)")
        check_pair(base, aligned)
    spec = parse_targets(targets)
    modules = target_modules(aligned, spec)
    if not modules:
        raise AsftError(f"{aligned.path}: no 2-D weight matches the targets {spec if isinstance(spec, str) else ','.join(spec)}")
    if isinstance(base, AdapterSide):
        missing = [m for m in modules if m not in base.pairs]
        if missing:
            raise AsftError(f"{base.path}: the adapter has no LoRA weights for {len(missing)} target modules "
                            f"(e.g. {missing[0]}); train it on the same targets")
    shapes = {m: tuple(aligned.shape(f"{m}.weight")) for m in modules}

    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "targets": json.dumps(spec),
        "rank": json.dumps(rank),
        "dtype": "float32",
        "modules": json.dumps(modules),
        "shapes": json.dumps({m: list(s) for m, s in shapes.items()}),
        "base_fingerprint": base.fingerprint() if isinstance(base, AdapterSide) else fingerprint(base),
        "aligned_fingerprint": fingerprint(aligned),
        "base_dir": str(base.path.resolve()),
        "aligned_dir": str(aligned.path.resolve()),
    }
    norms: dict[str, float] = {}

    def zero_check() -> None:
        bad = [m for m, v in norms.items() if not math.isfinite(v)]
        if bad:
            raise AsftError(f"{aligned.path} / {base.path}: V of {bad[0]} is not finite (NaN or inf weights)")
        if all(v == 0 for v in norms.values()):
            raise AsftError(f"{aligned.path}: identical to {base.path} on every target module (V = 0)")

    if out is None:
        tensors: dict[str, torch.Tensor] = {}
        for m, ts in _anchor_tensors(base, aligned, modules, rank, progress):
            norms[m] = float(ts[f"{m}.norm"])
            tensors.update(ts)
        zero_check()
        anchor = _anchor_from_tensors(tensors, metadata, None)
        return AnchorFile(None, metadata, shapes, norms, anchor)

    out = Path(out)
    from asft.fileio import output_lock

    with output_lock(out, "asft anchor", folder=False), atomic_path(out, overwrite=overwrite) as tmp, \
            open(tmp, "wb") as f:
        writer = SafetensorsWriter(f, _specs(modules, shapes, rank), metadata)
        for m, ts in _anchor_tensors(base, aligned, modules, rank, progress):
            norms[m] = float(ts[f"{m}.norm"])
            for name, t in ts.items():
                writer.write(name, t)
        writer.close()
        zero_check()
    return AnchorFile(out, metadata, shapes, norms, None)


# --------------------------------------------------------------------------------------------
# Loading and checking


class AdapterSide:
    """The unaligned side of an anchor given as a LoRA adapter trained FROM the aligned model (e.g.
    on harmful data, for an aligned model published without its base): its weights are
    W_aligned + s B A on the adapter's modules (s = alpha / r, or alpha / sqrt(r) with rsLoRA) and
    W_aligned elsewhere, so the anchor is V = W_aligned - W_unaligned = -s B A: the direction from
    the harmful fine-tune back to the aligned model. Read from safetensors only."""

    def __init__(self, aligned: ModelFolder, adapter: str | os.PathLike):
        self.aligned, self.path = aligned, Path(adapter)
        self.pairs, self.scaling = read_lora_adapter(self.path)

    def get_tensor(self, name: str) -> torch.Tensor:
        W = self.aligned.get_tensor(name).float()
        pair = self.pairs.get(name.removesuffix(".weight"))
        if pair is not None:
            A, B = pair
            W = W + self.scaling * (B @ A)
        return W

    def fingerprint(self) -> str:
        return folder_identity(self.path)


def _anchor_from_tensors(tensors: dict[str, torch.Tensor], metadata: dict, path: Path | None) -> Anchor:
    where = str(path) if path is not None else "anchor"
    try:
        modules = json.loads(metadata["modules"])
        shapes = json.loads(metadata["shapes"])
    except (KeyError, json.JSONDecodeError):
        raise AsftError(f"{where}: anchor metadata lacks a valid module list") from None
    entries = {}
    for m in modules:
        def get(suffix: str, required: bool = True):
            t = tensors.get(f"{m}.{suffix}")
            if t is None and required:
                raise AsftError(f"{where}: anchor is incomplete: no tensor {m}.{suffix}")
            return t

        shape = tuple(shapes[m])
        norm = float(get("norm"))
        V = get("V", required=False)
        if V is not None:
            entry = AnchorEntry(m, shape, norm, V=V)
        else:
            entry = AnchorEntry(m, shape, norm, U=get("U"), S=get("S"), Vh=get("Vh"))
        got = tuple(V.shape) if V is not None else (entry.U.shape[0], entry.Vh.shape[1])
        if got != shape:
            raise AsftError(f"{where}: {m} has shape {got}, metadata says {shape}")
        entries[m] = entry
    return Anchor(entries, dict(metadata), path)


def load_anchor(path: str | os.PathLike, device=None) -> Anchor:
    """Read an anchor file written by ``build_anchor`` (tensors float32, on ``device``)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise AsftError(f"{path}: anchor file not found")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise AsftError(f"{path}: not an asft anchor file (metadata format is {metadata.get('format')!r})")
            if metadata.get("version") != VERSION:
                raise AsftError(f"{path}: anchor format version {metadata.get('version')!r}; this asft reads {VERSION!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except AsftError:
        raise
    except Exception as e:  # safetensors' own errors: header, truncation, not safetensors at all
        raise AsftError(f"{path}: not a safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    bad = next((k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:  # before: a LinAlgError deep in the penalty's set-up
        raise AsftError(f"{path}: tensor {bad} holds non-finite values (NaN or inf); rebuild the anchor "
                        "(asft anchor) from finite weights")
    if device is not None:
        tensors = {k: t.to(device) for k, t in tensors.items()}
    return _anchor_from_tensors(tensors, metadata, path)


def _find_weight(params: dict[str, torch.Tensor], module: str) -> torch.Tensor | None:
    # Plain model, PEFT-wrapped model ("base_model.model." prefix), LoRA layer ("base_layer" nesting).
    for prefix in ("", "base_model.model."):
        for nest in ("", ".base_layer"):
            p = params.get(f"{prefix}{module}{nest}.weight")
            if p is not None:
                return p
    return None


def check_anchor_matches(anchor: Anchor, model_dir_or_model) -> None:
    """Refuse an anchor computed from a different model than the one about to be fine-tuned.

    For a folder: its fingerprint must equal the anchor's ``aligned_fingerprint``. For an
    ``nn.Module`` (optionally PEFT-wrapped): every anchored module must exist with the same shape.
    """
    where = str(anchor.path) if anchor.path is not None else "anchor"
    if isinstance(model_dir_or_model, (str, os.PathLike)):
        folder = ModelFolder(model_dir_or_model)
        fp = fingerprint(folder)
        if fp != anchor.metadata.get("aligned_fingerprint"):
            reason = f"fingerprint differs (the anchor was computed from {anchor.metadata.get('aligned_dir', '?')})"
            if fp == anchor.metadata.get("base_fingerprint"):
                reason = "it is the base model of the anchor; fine-tune the aligned model"
            raise AsftError(f"{where}: anchor does not belong to {folder.path}: {reason}")
        return
    model = model_dir_or_model
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    params = dict(model.named_parameters())
    for m, entry in anchor.entries.items():
        p = _find_weight(params, m)
        if p is None:
            raise AsftError(f"{where}: anchor does not belong to {name}: the model has no module {m}")
        if tuple(p.shape) != tuple(entry.shape):
            raise AsftError(
                f"{where}: anchor does not belong to {name}: {m}.weight has shape {tuple(p.shape)}, anchor {tuple(entry.shape)}"
            )


def inspect_anchor(anchor: Anchor, top: int = 5, k: int = 8) -> list[dict]:
    """Per-module numbers that say what the regulariser will do with this anchor.

    Keys: module, shape, exact, rank (numerical rank of V, or the stored K), norm (||V||_F),
    singular_values (top ``top``), c_max_eig = sigma_1^2 / ||V||_F (largest eigenvalue of the
    reference C = V V^T / ||V||_F), energy_top_k (sum_{i<=k} sigma_i^2 / ||V||_F^2), k, verdict.
    The verdict is set when c_max_eig < 0.5: then ||(I-C) B A||^2 >= 0.25 ||B A||^2 for every
    update, i.e. the reference-form penalty is close to a plain L2 penalty on B A.
    """
    rows = []
    for m, e in anchor.entries.items():
        S = e.singular_values().detach().double().cpu()
        if e.exact:
            tol = (S[0] * max(e.shape) * torch.finfo(torch.float32).eps) if len(S) else 0.0
            rank = int((S > tol).sum()) if len(S) and S[0] > 0 else 0
        else:
            rank = len(S)
        norm = float(e.norm)
        s1 = float(S[0]) if len(S) else 0.0
        eig = s1**2 / norm if norm > 0 else 0.0
        energy = float((S[:k] ** 2).sum()) / norm**2 if norm > 0 else 0.0
        verdict = None
        if eig < NEAR_ZERO_EIG:
            verdict = (
                f"reference C is near zero (max eigenvalue {eig:.3g}): ||(I-C)BA||^2 >= "
                f"{(1 - eig) ** 2:.2f} ||BA||^2, close to a plain L2 penalty on BA"
            )
        rows.append({
            "module": m, "shape": tuple(e.shape), "exact": e.exact, "rank": rank, "norm": norm,
            "singular_values": [float(s) for s in S[:top]], "c_max_eig": eig,
            "energy_top_k": energy, "k": k, "verdict": verdict,
        })
    return rows
