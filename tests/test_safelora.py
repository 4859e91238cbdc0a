"""Safe LoRA projection: exactness against a naive float64 computation, selection, saved adapters, CLI."""

import json

import pytest
import torch

from _models import make_llama_pair, tiny_llama_config
from asft.models.anchor import Anchor, AnchorEntry, build_anchor
from asft.errors import AsftError
from asft.methods.safelora import default_num, project_b, safelora_adapter, safelora_project, select, update_stats

R, ALPHA = 4, 16  # LoRA rank and alpha of every test adapter: scaling 4
SCALING = ALPHA / R


def naive(V, A, B, scaling, P=None):
    """Materialise C (d_out, d_out) and dW (d_out, d_in) in float64: (similarity, C B, ||dW||, ||C dW||)."""
    V, A, B = V.double(), A.double(), B.double()
    C = P.double() @ P.double().T if P is not None else V @ V.T / torch.linalg.matrix_norm(V)
    dW = scaling * B @ A
    CdW = C @ dW
    sim = float((dW * CdW).sum() / (torch.linalg.matrix_norm(dW) * torch.linalg.matrix_norm(CdW)))
    return sim, C @ B, float(torch.linalg.matrix_norm(dW)), float(torch.linalg.matrix_norm(CdW))


# ----------------------------------------------------------------------------- plain tensors

@pytest.mark.parametrize("d_out,d_in", [(48, 80), (80, 48)])
def test_similarity_and_projection_equal_naive_exact_anchor(d_out, d_in):
    g = torch.Generator().manual_seed(0)
    V = torch.randn(d_out, d_in, generator=g)
    A, B = torch.randn(R, d_in, generator=g), torch.randn(d_out, R, generator=g)
    entry = AnchorEntry("m", (d_out, d_in), float(torch.linalg.matrix_norm(V.double())), V=V)
    CB = project_b(entry, B)
    st = update_stats(A, B, CB, scaling=2.5)
    sim, CB_ref, nb, na = naive(V, A, B, 2.5)
    assert CB.dtype == torch.float64
    torch.testing.assert_close(CB, CB_ref, rtol=1e-10, atol=1e-12)
    assert st["similarity"] == pytest.approx(sim, rel=1e-10)
    assert st["norm_before"] == pytest.approx(nb, rel=1e-10)
    assert st["norm_after"] == pytest.approx(na, rel=1e-10)
    assert 0 < sim < 1  # a random update is neither along C nor orthogonal to it


def test_similarity_and_projection_equal_naive_low_rank_anchor():
    g = torch.Generator().manual_seed(1)
    V = torch.randn(40, 64, generator=g, dtype=torch.float64)
    U, S, Vh = torch.linalg.svd(V, full_matrices=False)
    k, norm = 6, float(torch.linalg.matrix_norm(V.double()))  # norm of the FULL V, as the anchor stores it
    entry = AnchorEntry("m", (40, 64), norm, U=U[:, :k].float(), S=S[:k].float(), Vh=Vh[:k].float())
    A, B = torch.randn(R, 64, generator=g), torch.randn(40, R, generator=g)
    P = U[:, :k].float().double() * S[:k].float().double() / norm**0.5
    sim, CB_ref, nb, na = naive(V, A, B, 1.0, P=P)
    CB = project_b(entry, B)
    st = update_stats(A, B, CB)
    torch.testing.assert_close(CB, CB_ref, rtol=1e-10, atol=1e-12)
    assert st["similarity"] == pytest.approx(sim, rel=1e-10)
    assert (st["norm_before"], st["norm_after"]) == pytest.approx((nb, na), rel=1e-10)


def test_update_in_the_anchor_span_has_similarity_one():
    # V with two equal singular values: C = (1/sqrt 2) U U^T, so C B = B / sqrt 2 for B in span(U).
    g = torch.Generator().manual_seed(2)
    U = torch.linalg.qr(torch.randn(32, 2, generator=g, dtype=torch.float64))[0]
    W = torch.linalg.qr(torch.randn(48, 2, generator=g, dtype=torch.float64))[0]
    V = (U @ W.T).float()
    entry = AnchorEntry("m", (32, 48), float(torch.linalg.matrix_norm(V.double())), V=V)
    B = (U @ torch.randn(2, R, generator=g, dtype=torch.float64)).float()
    A = torch.randn(R, 48, generator=g)
    st = update_stats(A, B, project_b(entry, B))
    assert st["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert st["norm_after"] == pytest.approx(st["norm_before"] / 2**0.5, rel=1e-6)


def test_zero_update_and_zero_anchor():
    g = torch.Generator().manual_seed(3)
    A, B = torch.randn(R, 16, generator=g), torch.randn(8, R, generator=g)
    V = torch.randn(8, 16, generator=g)
    entry = AnchorEntry("m", (8, 16), float(torch.linalg.matrix_norm(V.double())), V=V)
    zero_b = update_stats(A, torch.zeros_like(B), project_b(entry, torch.zeros_like(B)))
    assert zero_b == {"similarity": None, "norm_before": 0.0, "norm_after": 0.0}
    untouched = AnchorEntry("m", (8, 16), 0.0, V=torch.zeros(8, 16))
    CB = project_b(untouched, B)
    assert torch.count_nonzero(CB) == 0
    st = update_stats(A, B, CB)
    assert st["similarity"] == 0.0 and st["norm_before"] > 0 and st["norm_after"] == 0.0
    # no similarity: never selected, whatever the rule
    assert select({"a": None, "b": 0.3}, "threshold", threshold=2.0) == {"b"}
    assert select({"a": None, "b": 0.3}, "number", num=2) == {"b"}


def test_select_threshold_and_number_modes():
    sims = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.3}
    assert select(sims, "threshold") == {"b", "d", "c"}  # default 0.5, inclusive as the reference
    assert select(sims, "threshold", threshold=0.95) == set(sims)
    assert select(sims, "threshold", threshold=0.500004) == {"b", "d", "c"}
    assert select({"x": 0.500004}, "threshold", threshold=0.5) == {"x"}  # rounded to 5 decimals first
    assert select(sims, "number", num=1) == {"b"}
    assert select(sims, "number", num=3) == {"b", "d", "c"}
    assert select(sims, "number", num=0) == set()
    assert select(sims) == {"b"}  # default: the reference's share, round(10/64 * 4) = 1
    assert select({"a": 0.2, "b": 0.2, "c": 0.7}, "number", num=1) == {"a", "b"}  # ties included
    assert [default_num(n) for n in (1, 4, 12, 64, 224)] == [1, 1, 2, 10, 35]
    with pytest.raises(AsftError, match="num must be"):
        select(sims, "number", num=-1)
    with pytest.raises(AsftError, match="threshold must be a finite"):
        select(sims, "threshold", threshold=float("nan"))
    with pytest.raises(AsftError, match="unknown Safe LoRA selection"):
        select(sims, "ratio")


def _reference_selection(cos: list[float], mode: str, threshold: float, num: int) -> list[bool]:
    """The authors' SafeLoRA.projected_weighted / __init__ selection, re-expressed: round every
    cosine to 5 decimals; "number" sets the threshold to the num-th smallest; project cos <= thrs."""
    import numpy as np

    cos = [float(np.round(c, 5)) for c in cos]
    thrs = float(np.sort(cos)[:num][-1]) if mode == "number" else threshold
    return [c <= thrs for c in cos]


@pytest.mark.parametrize("mode", ["number", "threshold"])
def test_selection_equals_the_authors_code_on_random_modules(mode):
    g = torch.Generator().manual_seed(11)
    for trial in range(20):
        n = int(torch.randint(2, 30, (1,), generator=g))
        cos = (torch.rand(n, generator=g) * 0.8).tolist()
        cos[-1] = cos[0] + 1e-7  # a tie after rounding
        num, thr = int(torch.randint(1, n + 1, (1,), generator=g)), float(torch.rand(1, generator=g) * 0.8)
        names = [f"m{i:02d}" for i in range(n)]
        ours = select(dict(zip(names, cos)), mode, threshold=thr, num=num)
        ref = _reference_selection(cos, mode, thr, num)
        assert ours == {nm for nm, chosen in zip(names, ref) if chosen}, trial


# ----------------------------------------------------------------------------- PEFT model in memory

def _peft_model(seed=0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config())
    lora = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(model, lora)


def _pairs(model):
    from asft.methods.regularizer import lora_pairs

    return lora_pairs(model)


def test_threshold_projects_exactly_the_low_similarity_modules():
    """Rank-2 anchors with equal singular values: B in span(U) gives similarity 1 (kept at 0.5),
    a random B a low one (projected to C B)."""
    model = _peft_model()
    pairs = _pairs(model)
    names = sorted(pairs)
    assert len(names) == 4
    g = torch.Generator().manual_seed(4)
    entries, aligned = {}, set(names[::2])
    for n in names:
        A, B, _ = pairs[n]
        d_out, d_in = B.shape[0], A.shape[1]
        U = torch.linalg.qr(torch.randn(d_out, 2, generator=g, dtype=torch.float64))[0]
        W = torch.linalg.qr(torch.randn(d_in, 2, generator=g, dtype=torch.float64))[0]
        V = (U @ W.T).float()
        entries[n] = AnchorEntry(n, (d_out, d_in), float(torch.linalg.matrix_norm(V.double())), V=V)
        if n in aligned:
            with torch.no_grad():
                B.copy_((U @ torch.randn(2, R, generator=g, dtype=torch.float64)).float())
    before = {n: (pairs[n][0].detach().clone(), pairs[n][1].detach().clone()) for n in names}
    expected = {n: naive(entries[n].V, *before[n], SCALING) for n in names}

    rows = safelora_project(model, Anchor(entries, {}), mode="threshold")
    assert [r["module"] for r in rows] == names
    for r in rows:
        n = r["module"]
        sim, CB_ref, nb, na = expected[n]
        assert r["similarity"] == pytest.approx(sim, rel=1e-9)
        assert r["projected"] == (n not in aligned) == (sim < 0.5)
        A, B, _ = pairs[n]
        assert torch.equal(A, before[n][0])  # A never changes
        if r["projected"]:
            torch.testing.assert_close(B.double(), CB_ref, rtol=1e-5, atol=1e-7)
            assert r["norm_after"] == pytest.approx(na, rel=1e-9)
        else:
            assert torch.equal(B, before[n][1])
            assert r["norm_after"] == r["norm_before"]
        assert r["norm_before"] == pytest.approx(nb, rel=1e-9)
    assert {r["module"] for r in rows if r["projected"]} == set(names) - aligned


def test_number_mode_projects_the_lowest_similarities():
    model = _peft_model(seed=1)
    pairs = _pairs(model)
    g = torch.Generator().manual_seed(5)
    entries = {}
    for n, (A, B, _) in pairs.items():
        V = torch.randn(B.shape[0], 3, generator=g) @ torch.randn(3, A.shape[1], generator=g)  # rank 3
        entries[n] = AnchorEntry(n, tuple(V.shape), float(torch.linalg.matrix_norm(V.double())), V=V)
    sims = {n: naive(entries[n].V, A.detach(), B.detach(), SCALING)[0] for n, (A, B, _) in pairs.items()}
    lowest = sorted(sims, key=sims.get)[:2]
    rows = safelora_project(model, Anchor(entries, {}), mode="number", num=2)
    assert {r["module"] for r in rows if r["projected"]} == set(lowest)


def test_missing_or_misshaped_anchor_is_refused():
    model = _peft_model()
    pairs = _pairs(model)
    names = sorted(pairs)
    entries = {n: AnchorEntry(n, (pairs[n][1].shape[0], pairs[n][0].shape[1]), 1.0,
                              V=torch.ones(pairs[n][1].shape[0], pairs[n][0].shape[1])) for n in names[1:]}
    with pytest.raises(AsftError, match=f"no anchor for LoRA module {names[0]}"):
        safelora_project(model, Anchor(entries, {}))
    entries[names[0]] = AnchorEntry(names[0], (3, 5), 1.0, V=torch.ones(3, 5))
    with pytest.raises(AsftError, match="has shape"):
        safelora_project(model, Anchor(entries, {}))


# ----------------------------------------------------------------------------- saved adapters and CLI

@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base/aligned pair, its anchor file, and a random (non-zero) LoRA adapter of aligned."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("safelora")
    base, aligned = make_llama_pair(root, seed=0)
    anchor = root / "anchor.safetensors"
    build_anchor(base, aligned, out=anchor)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(aligned)
    lora = LoraConfig(r=R, lora_alpha=ALPHA, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "adapter")
    return {"root": root, "base": base, "aligned": aligned, "anchor": anchor, "adapter": root / "adapter"}


def _weights(folder, names):
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    out = {}
    for f in files:
        with safe_open(f, "pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys() if k in names})
    return out


def test_saved_adapter_loads_and_merges_to_the_projected_weights(world, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "proj"
    rows = safelora_adapter(world["aligned"], world["adapter"], world["anchor"], out, mode="number", num=2,
                            dtype="float32", device="cpu")
    assert sum(r["projected"] for r in rows) == 2 and len(rows) == 4
    assert {p.name for p in out.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json", "safelora.json"}
    assert not (out / ".adapter.tmp").exists()
    record = json.loads((out / "safelora.json").read_text())
    assert record["rows"] == rows and (record["select"], record["num"], record["threshold"]) == ("number", 2, None)
    assert record["projected"] == 2

    names = [r["module"] for r in rows]
    W = _weights(world["aligned"], {f"{n}.weight" for n in names})
    W0 = _weights(world["base"], {f"{n}.weight" for n in names})
    lora = load_file(str(world["adapter"] / "adapter_model.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(world["aligned"])
    merged = PeftModel.from_pretrained(model, out).merge_and_unload().state_dict()
    sims = {}
    for r in rows:
        n = r["module"]
        A = lora[f"base_model.model.{n}.lora_A.weight"]
        B = lora[f"base_model.model.{n}.lora_B.weight"]
        V = W[f"{n}.weight"].double() - W0[f"{n}.weight"].double()
        sims[n], CB, _, _ = naive(V, A, B, SCALING)
        assert r["similarity"] == pytest.approx(sims[n], rel=1e-5)  # the file's V is float32
        update = SCALING * (CB if r["projected"] else B.double()) @ A.double()
        expected = W[f"{n}.weight"].double() + update
        torch.testing.assert_close(merged[f"{n}.weight"].double(), expected, rtol=1e-5, atol=1e-6)
    assert {r["module"] for r in rows if r["projected"]} == set(sorted(sims, key=sims.get)[:2])
    # everything else is the aligned model untouched
    other = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(merged[other], _weights(world["aligned"], {other})[other])


def test_anchor_of_another_model_and_bad_outputs_are_refused(world, tmp_path):
    other_base, other_aligned = make_llama_pair(tmp_path / "other", seed=5)
    other = tmp_path / "other.safetensors"
    build_anchor(other_base, other_aligned, out=other)
    with pytest.raises(AsftError, match="does not belong"):
        safelora_adapter(world["aligned"], world["adapter"], other, tmp_path / "x", device="cpu")
    with pytest.raises(AsftError, match="does not belong.*base model"):
        safelora_adapter(world["base"], world["adapter"], world["anchor"], tmp_path / "x", device="cpu")
    assert not (tmp_path / "x").exists()
    with pytest.raises(AsftError, match="is the input adapter"):
        safelora_adapter(world["aligned"], world["adapter"], world["anchor"], world["adapter"], device="cpu")
    with pytest.raises(AsftError, match="num must be"):
        safelora_adapter(world["aligned"], world["adapter"], world["anchor"], tmp_path / "x", num=-2)


def test_cli_end_to_end(world, tmp_path, capsys):
    from asft.cli import main

    out = tmp_path / "cli"
    argv = ["safelora", "--model", str(world["aligned"]), "--adapter", str(world["adapter"]),
            "--anchor", str(world["anchor"]), "--out", str(out), "--select", "threshold", "--threshold", "2",
            "--dtype", "float32"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "projected 4 of 4 modules (similarity <= 2)" in text  # cosine <= 1 < 2: all projected
    assert "model.layers.1.self_attn.v_proj" in text
    record = json.loads((out / "safelora.json").read_text())
    assert record["threshold"] == 2.0 and all(r["projected"] for r in record["rows"])
    assert main(argv) == 2  # the adapter exists now
    assert "already holds an adapter" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    with pytest.raises(SystemExit):  # the fraction option is gone: the reference's modes only
        main(argv + ["--ratio", "0.5"])
    assert main(argv[:-6] + ["--dtype", "float32", "--overwrite"]) == 0  # default: number mode
    text = capsys.readouterr().out
    assert "projected 1 of 4 modules (the 1 lowest similarities)" in text
