"""The fast penalty must equal the reference formulation (materialised C) to float64 precision."""

import math

import pytest
import torch

from asft.models.anchor import AnchorEntry
from asft.errors import AsftError
from asft.methods.regularizer import (
    AsftPenalty,
    ModuleOperator,
    build_operator,
    lora_pairs,
    naive_penalty,
    penalty_l2,
)

SHAPES = [(12, 20, 3), (20, 12, 4), (16, 16, 8), (7, 30, 2)]  # (d_out, d_in, r): square, GQA-like, tall


def _rand(d_out, d_in, r, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    if rank is None:
        V = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    else:  # rank-deficient V
        V = torch.randn(d_out, rank, generator=g, dtype=torch.float64) @ torch.randn(
            rank, d_in, generator=g, dtype=torch.float64)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64)
    return V, A, B


def _entry(V, rank=None):
    norm = float(torch.linalg.matrix_norm(V))
    if rank is None:
        return AnchorEntry(name="m", shape=tuple(V.shape), norm=norm, V=V)
    U, S, Vh = torch.linalg.svd(V, full_matrices=False)
    return AnchorEntry(name="m", shape=tuple(V.shape), norm=norm, U=U[:, :rank], S=S[:rank], Vh=Vh[:rank])


def _naive_C(V, form, k=None):
    if form == "zero":
        return torch.zeros(V.shape[0], V.shape[0], dtype=V.dtype)
    if form == "scaled":  # the paper's C rescaled: largest eigenvalue exactly 1
        if k is None:
            return V @ V.T / torch.linalg.matrix_norm(V, ord=2) ** 2
        U, S, _ = torch.linalg.svd(V, full_matrices=False)
        return (U[:, :k] * S[:k] ** 2) @ U[:, :k].T / S[0] ** 2
    if form == "reference":
        if k is None:
            return V @ V.T / torch.linalg.matrix_norm(V)
        U, S, _ = torch.linalg.svd(V, full_matrices=False)
        return (U[:, :k] * S[:k] ** 2) @ U[:, :k].T / torch.linalg.matrix_norm(V)
    U, _, _ = torch.linalg.svd(V, full_matrices=False)
    return U[:, :k] @ U[:, :k].T


CASES = [  # (form, strategy, anchor rank, k)
    ("reference", "full", None, None),
    ("reference", "gram", None, None),
    ("reference", "factors", 3, 3),
    ("projector", "factors", None, 3),
    ("scaled", "full", None, None),
    ("scaled", "gram", None, None),
    ("scaled", "factors", 3, 3),
    ("zero", "zero", None, None),
]


def _build(V, form, strategy, anchor_rank, k):
    """Operator from a float64 entry. Exact anchors used with the projector form get their factors
    stored (as a rank-K anchor file holds them) so no float32 SVD enters the float64 check."""
    if form == "projector" and anchor_rank is None:
        anchor_rank = min(V.shape)
    return build_operator(_entry(V, anchor_rank), form, k=k,
                          strategy=strategy if strategy in ("full", "gram") else "auto")


@pytest.mark.parametrize("d_out,d_in,r", SHAPES)
@pytest.mark.parametrize("form,strategy,anchor_rank,k", CASES)
@pytest.mark.parametrize("deficient", [False, True])
def test_penalty_equals_naive_float64(d_out, d_in, r, form, strategy, anchor_rank, k, deficient):
    V, A, B = _rand(d_out, d_in, r, rank=2 if deficient else None, seed=d_out * d_in + r)
    if k is not None and deficient:
        k = min(k, 2)
        anchor_rank = min(anchor_rank, 2) if anchor_rank else None
    op = _build(V, form, strategy, anchor_rank, k)
    assert op.kind == strategy
    A1, B1 = A.clone().requires_grad_(), B.clone().requires_grad_()
    A2, B2 = A.clone().requires_grad_(), B.clone().requires_grad_()
    fast = op.penalty(A1, B1)
    ref = naive_penalty([(A2, B2, _naive_C(V, form, k))])
    assert fast.dtype == torch.float64
    assert abs(fast.item() - ref.item()) <= 1e-6 * abs(ref.item())
    fast.backward()
    ref.backward()
    torch.testing.assert_close(A1.grad, A2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(B1.grad, B2.grad, rtol=1e-6, atol=1e-9)


def test_float32_operators_close_to_float64():
    V, A, B = _rand(24, 40, 4, seed=3)
    ref = naive_penalty([(A, B, _naive_C(V, "reference"))]).item()
    for strategy in ("full", "gram"):
        op = build_operator(_entry(V.float()), "reference", strategy=strategy)
        assert op.kind == strategy
        got = op.penalty(A.float(), B.float()).item()
        assert abs(got - ref) <= 1e-4 * ref


def test_auto_strategy_picks_gram_for_wide_modules_and_the_v_form_for_square_ones_on_cpu():
    assert build_operator(_entry(torch.randn(8, 32)), "reference").kind == "gram"
    assert build_operator(_entry(torch.randn(16, 16)), "reference").kind == "full"  # no d^3 set-up on CPU
    assert build_operator(_entry(torch.randn(32, 8)), "reference").kind == "full"
    assert build_operator(_entry(torch.randn(16, 16)), "reference", strategy="gram").kind == "gram"


@pytest.mark.parametrize("spectrum", ["flat", "power", "gap"])
def test_top_singular_value_matches_the_exact_svd(spectrum):
    """The start-up estimate of C's largest eigenvalue against a float64 SVD, on spectra that are
    easy (power law), hard (flat: random noise) and with one dominant direction."""
    from asft.methods.regularizer import top_singular_value

    g = torch.Generator().manual_seed(3)
    U, _ = torch.linalg.qr(torch.randn(120, 120, generator=g, dtype=torch.float64))
    W, _ = torch.linalg.qr(torch.randn(200, 120, generator=g, dtype=torch.float64))
    i = torch.arange(1, 121, dtype=torch.float64)
    S = {"flat": 1 + 0.01 * torch.rand(120, generator=g, dtype=torch.float64),
         "power": 1 / i, "gap": torch.where(i == 1, 10.0, 1 / i)}[spectrum]
    M = (U * S) @ W.T  # (120, 200) with singular values S
    exact = float(torch.linalg.svdvals(M)[0])
    state = torch.random.get_rng_state()
    est = top_singular_value(M.float())
    assert torch.equal(torch.random.get_rng_state(), state)  # the training RNG is untouched
    assert est <= exact * (1 + 1e-6)
    if spectrum == "flat":  # no gap to converge on: the estimate stays inside the spread (1%)
        assert est >= float(S.min())
    else:
        assert abs(est - exact) <= 1e-3 * exact


def test_scale_warning_when_the_reference_c_has_eigenvalues_above_one():
    from asft.methods.regularizer import AsftPenalty

    A, B = torch.nn.Parameter(torch.randn(2, 16)), torch.nn.Parameter(torch.randn(16, 2))
    pairs = {"m": (A, B, 1.0)}
    V = torch.zeros(16, 16)
    V[0, 0] = 1.0  # ||V||_F = 1, sigma_1 = 1: eigenvalue 1, still a projector complement
    assert AsftPenalty(pairs, {"m": build_operator(_entry(V), "reference")}).scale_warning() is None
    V[0, 0] = 3.0  # eigenvalue 9 / 3 = 3 > 2: updates along V are penalised more than by L2
    msg = AsftPenalty(pairs, {"m": build_operator(_entry(V), "reference")}).scale_warning()
    assert "above 1 in 1 of 1" in msg and "largest 3" in msg and "more than by plain L2" in msg


def test_gradcheck_fast_penalty():
    V, A, B = _rand(6, 9, 2, seed=5)
    for form, strategy, ar, k in CASES:
        op = _build(V, form, strategy, ar, k)
        assert torch.autograd.gradcheck(lambda a, b: op.penalty(a, b),
                                        (A.clone().requires_grad_(), B.clone().requires_grad_()))


def test_projector_penalty_zero_inside_subspace_and_monotone_toward_it():
    V, A, B = _rand(20, 14, 4, seed=7)
    op = _build(V, "projector", "factors", None, 5)
    U = op.P
    B_in = U @ torch.randn(5, 4, dtype=torch.float64)  # columns of B inside span(U_k)
    assert op.penalty(A, B_in).item() < 1e-20
    B_proj = U @ (U.T @ B)
    values = [op.penalty(A, (1 - t) * B + t * B_proj).item() for t in torch.linspace(0, 1, 11)]
    assert values[0] > 1.0
    assert all(a > b for a, b in zip(values, values[1:]))
    # exactly quadratic in the remaining distance: (1 - t)^2 * p0
    assert abs(values[5] - 0.25 * values[0]) < 1e-9 * values[0]


def test_reference_penalty_smaller_than_l2_and_c_spectrum():
    V, A, B = _rand(16, 16, 4, seed=11)
    op = _build(V, "reference", "full", None, None)
    s1 = torch.linalg.matrix_norm(V, ord=2).item()
    assert abs(op.c_max_eig() - s1**2 / torch.linalg.matrix_norm(V).item()) < 1e-9
    # B inside V's top left singular direction: penalty = (1 - c1)^2 * l2
    U = torch.linalg.svd(V)[0][:, :1]
    B1 = U @ torch.randn(1, 4, dtype=torch.float64)
    c1 = op.c_max_eig()
    assert abs(op.penalty(A, B1).item() - (1 - c1) ** 2 * penalty_l2(A, B1).item()) < 1e-8 * penalty_l2(A, B1).item()


def test_projector_needs_k():
    with pytest.raises(AsftError, match="rank k"):
        build_operator(_entry(torch.randn(4, 4)), "projector")


def test_zero_anchor_module_is_the_l2_limit():
    # C = V V^T / ||V||_F -> 0 as V -> 0, so a module alignment left untouched gets plain L2.
    op = build_operator(AnchorEntry(name="m", shape=(3, 3), norm=0.0, V=torch.zeros(3, 3)), "reference")
    assert op.kind == "zero"


# ----------------------------------------------------------------------------- on a PEFT model

def _peft_model(seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    for n, p in model.named_parameters():  # PEFT starts B at zero: give it values so the test can fail
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    return model


def _anchor_for(model, seed=1):
    from asft.models.anchor import Anchor

    g = torch.Generator().manual_seed(seed)
    entries = {}
    for name, (A, B, _) in lora_pairs(model).items():
        V = torch.randn(B.shape[0], A.shape[1], generator=g)
        entries[name] = AnchorEntry(name=name, shape=tuple(V.shape), norm=float(V.norm()), V=V)
    return Anchor(entries=entries, metadata={}, path=None)


def test_penalty_over_peft_model_sums_modules_and_reaches_grads():
    model = _peft_model()
    anchor = _anchor_for(model)
    pairs = lora_pairs(model)
    assert len(pairs) == 4 and all(k.startswith("model.layers.") for k in pairs)
    pen = AsftPenalty.from_model(model, anchor, form="reference", lam=2.5)
    ref = sum(naive_penalty([(A.double(), B.double(), _naive_C(anchor.entries[n].V.double(), "reference"))]).item()
              for n, (A, B, _) in pairs.items())
    value = pen()
    assert abs(value.item() - 2.5 * ref) <= 1e-4 * 2.5 * ref
    value.backward()
    assert all(B.grad is not None and B.grad.abs().sum() > 0 for _, B, _ in pairs.values())
    # spectrum reports sigma_1^2 / ||V||_F per module
    spec = pen.spectrum()
    n0 = sorted(pairs)[0]
    V0 = anchor.entries[n0].V.double()
    assert abs(spec[n0] - torch.linalg.matrix_norm(V0, ord=2).item() ** 2 / V0.norm().item()) < 1e-4


def test_l2_form_and_lora_scaling():
    model = _peft_model()
    pairs = lora_pairs(model)
    l2 = sum(((B @ A).double() ** 2).sum().item() for A, B, _ in pairs.values())
    assert abs(AsftPenalty.from_model(model, None, form="zero")().item() - l2) < 1e-4 * l2
    scaled = AsftPenalty.from_model(model, None, form="zero", scale_by_lora=True)().item()
    assert abs(scaled - (16 / 4) ** 2 * l2) < 1e-4 * scaled


def test_missing_or_mismatched_anchor_is_refused():
    model = _peft_model()
    anchor = _anchor_for(model)
    name = sorted(anchor.entries)[0]
    del anchor.entries[name]
    with pytest.raises(AsftError, match="no anchor for LoRA module"):
        AsftPenalty.from_model(model, anchor, form="reference")
    anchor = _anchor_for(model)
    anchor.entries[name] = AnchorEntry(name=name, shape=(5, 5), norm=1.0, V=torch.randn(5, 5))
    with pytest.raises(AsftError, match="shape"):
        AsftPenalty.from_model(model, anchor, form="reference")
    with pytest.raises(AsftError, match="needs an anchor"):
        AsftPenalty.from_model(model, None, form="reference")


def test_bf16_model_penalty_computed_in_float32():
    """A bf16 model's penalty equals the float64 reference on the same (bf16-rounded) weights to
    float32 precision: nothing of I - C is lost to bf16, and gradients reach the bf16 LoRA weights."""
    model = _peft_model().to(torch.bfloat16)
    anchor = _anchor_for(model)
    pen = AsftPenalty.from_model(model, anchor, form="reference", lam=2.0)
    value = pen()
    assert value.dtype == torch.float32
    ref = 2.0 * sum(naive_penalty([(A.double(), B.double(), _naive_C(anchor.entries[n].V.double(), "reference"))]).item()
                    for n, (A, B, _) in lora_pairs(model).items())
    assert value.item() == pytest.approx(ref, rel=1e-5)
    value.backward()
    for A, B, _ in lora_pairs(model).values():
        assert B.grad is not None and B.grad.dtype == torch.bfloat16 and B.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy", ["gram", "full"])
def test_penalty_under_autocast_stays_float32_and_backprops(strategy):
    model = _peft_model()
    pen = AsftPenalty.from_model(model, _anchor_for(model), form="reference", strategy=strategy)
    ref = pen().item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = pen()
    assert value.dtype == torch.float32 and value.item() == pytest.approx(ref, rel=1e-6)
    value.backward()
    assert all(B.grad is not None for _, B, _ in lora_pairs(model).values())


def test_each_operator_goes_to_its_own_modules_device(monkeypatch):
    """device_map="auto" spreads modules over devices: each module's operator must follow that
    module's LoRA weights, not the first module's. One CPU here, so the routing is checked by
    recording where each operator is sent while the modules claim different devices."""
    from asft.methods.regularizer import ModuleOperator

    model = _peft_model()
    pen = AsftPenalty.from_model(model, _anchor_for(model), form="reference", lam=1.0)
    claimed = {n: torch.device("cpu", i % 2) for i, n in enumerate(pen.names)}  # "cpu:0" / "cpu:1"
    sent = {}
    real_to = ModuleOperator.to

    def to(self, device, dtype=torch.float32):
        sent[self.name] = device
        return real_to(self, torch.device("cpu"), dtype)

    monkeypatch.setattr(ModuleOperator, "to", to)
    expected = pen().item()
    for n in pen.names:  # A's device as PEFT would report it under device_map
        A, B, s = pen.pairs[n]
        fake = type("A", (), {"device": claimed[n], "float": A.float, "new_zeros": A.new_zeros})()
        pen.pairs[n] = (fake, B, s)
    pen._device = None
    sent.clear()
    assert pen().item() == pytest.approx(expected)
    assert sent == claimed


def test_scaled_form_has_largest_eigenvalue_one_whatever_the_scale_of_v():
    """``scaled``: C = V V^T / sigma_max^2, so eig_max(C) = 1 where the reference C's is
    sigma_1^2 / ||V||_F (0.10-0.28 on the real and toy anchors); rescaling V changes nothing."""
    V, A, B = _rand(20, 12, 4, seed=11)
    ref, scaled = build_operator(_entry(V), "reference"), build_operator(_entry(V), "scaled")
    S = torch.linalg.svdvals(V)
    assert scaled.c_max == 1.0 and abs(ref.c_max - float(S[0] ** 2 / S.pow(2).sum().sqrt())) < 1e-3
    C = _naive_C(V, "scaled")
    assert abs(float(torch.linalg.eigvalsh(C).max()) - 1.0) < 1e-12
    assert abs(scaled.penalty(A, B).item() - build_operator(_entry(7.5 * V), "scaled").penalty(A, B).item()) < 1e-9
    # the update along V's top direction is free, as the projector form's
    u = torch.linalg.svd(V, full_matrices=False)[0][:, :1]
    assert scaled.penalty(A[:1], u).item() < 1e-20
