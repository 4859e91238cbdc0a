import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from _models import make_llama_pair
from asft.models.anchor import (
    Anchor,
    AnchorEntry,
    check_anchor_matches,
    build_anchor,
    inspect_anchor,
    load_anchor,
    match_targets,
)
from asft.models.checkpoints import ModelFolder
from asft.cli import main
from asft.errors import AsftError

torch.set_num_threads(1)

QV = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]


@pytest.fixture(scope="module")
def exact_file(pair, tmp_path_factory):
    out = tmp_path_factory.mktemp("anchors") / "exact.safetensors"
    build_anchor(*pair, out=out)
    return out


def _diff(pair, module):
    base, aligned = (load_file(d / "model.safetensors") for d in pair)
    w = f"{module}.weight"
    return aligned[w] - base[w]


def test_exact_anchor_is_aligned_minus_base(pair, exact_file):
    anchor = load_anchor(exact_file)
    assert list(anchor.entries) == QV
    for m, e in anchor.entries.items():
        V = _diff(pair, m)
        assert e.V.dtype == torch.float32 and torch.equal(e.V, V)
        assert e.shape == tuple(V.shape) and e.U is None
        assert e.norm == pytest.approx(float(torch.linalg.matrix_norm(V.double())), rel=1e-6)
    # GQA: v_proj maps 64 -> 2 kv heads x 16.
    assert anchor.entries["model.layers.0.self_attn.v_proj"].shape == (32, 64)
    md = anchor.metadata
    assert md["format"] == "asft-anchor" and md["version"] == "1" and json.loads(md["rank"]) is None
    assert json.loads(md["targets"]) == ["q_proj", "v_proj"] and json.loads(md["modules"]) == QV
    assert json.loads(md["shapes"])["model.layers.1.self_attn.v_proj"] == [32, 64]
    assert md["base_fingerprint"] != md["aligned_fingerprint"]


def test_low_rank_factors_are_the_best_rank_k_approximation(pair, tmp_path):
    k = 5
    res = build_anchor(*pair, rank=k, out=tmp_path / "r5.safetensors")
    anchor = load_anchor(res.path)
    for m, e in anchor.entries.items():
        V = _diff(pair, m).double()
        U, S, Vh = torch.linalg.svd(V, full_matrices=False)
        best = U[:, :k] @ torch.diag(S[:k]) @ Vh[:k]  # Eckart-Young
        approx = e.U.double() @ torch.diag(e.S.double()) @ e.Vh.double()
        assert e.V is None and e.U.shape == (V.shape[0], k) and e.Vh.shape == (k, V.shape[1])
        assert torch.allclose(approx, best, atol=1e-5)
        assert torch.allclose(e.S.double(), S[:k], rtol=1e-5)
        # The norm is that of the FULL V, not of its rank-k part.
        assert e.norm == pytest.approx(float(S.norm()), rel=1e-5)
        assert e.norm > float(S[:k].norm()) * 1.1
        assert res.norms[m] == e.norm


def test_rank_is_clamped_to_the_smallest_dimension(pair):
    anchor = build_anchor(*pair, rank=1000).anchor  # in memory: out=None
    e = anchor.entries["model.layers.0.self_attn.v_proj"]
    assert e.U.shape == (32, 32) and e.S.shape == (32,) and e.Vh.shape == (32, 64)
    assert torch.allclose(e.U @ torch.diag(e.S) @ e.Vh, _diff(pair, e.name), atol=1e-6)


def test_sharded_checkpoints_give_the_same_anchor(pair, sharded_pair, exact_file, tmp_path):
    sharded = load_anchor(build_anchor(*sharded_pair, out=tmp_path / "s.safetensors").path)
    single = load_anchor(exact_file)
    assert list(sharded.entries) == list(single.entries)
    for m in single.entries:
        assert torch.equal(sharded.entries[m].V, single.entries[m].V)
    for key in ("modules", "shapes", "targets", "base_fingerprint", "aligned_fingerprint"):
        assert sharded.metadata[key] == single.metadata[key]


def test_in_memory_result_equals_the_file(pair, exact_file):
    res = build_anchor(*pair)
    assert res.path is None
    on_disk = load_anchor(exact_file)
    for m, e in res.load().entries.items():
        assert torch.equal(e.V, on_disk.entries[m].V) and e.norm == on_disk.entries[m].norm


def test_regex_and_suffix_targets(pair):
    res = build_anchor(*pair, targets=r"re:model\.layers\.1\.self_attn\.(k|o)_proj")
    assert res.modules == ["model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.o_proj"]
    assert res.shapes["model.layers.1.self_attn.k_proj"] == (32, 64)
    assert torch.equal(res.anchor.entries["model.layers.1.self_attn.o_proj"].V, _diff(pair, "model.layers.1.self_attn.o_proj"))
    assert json.loads(res.metadata["targets"]).startswith("re:")
    res = build_anchor(*pair, targets="mlp.down_proj,k_proj")
    assert res.modules == [f"model.layers.{i}.{p}" for i in range(2) for p in ("mlp.down_proj", "self_attn.k_proj")]
    assert res.shapes["model.layers.0.mlp.down_proj"] == (64, 128)


def test_match_targets_rules():
    names = ["a.q_proj", "a.xq_proj", "q_proj", "b.self_attn.q_proj", "b.v_proj.lora"]
    assert match_targets(names, ["q_proj"]) == ["a.q_proj", "q_proj", "b.self_attn.q_proj"]
    assert match_targets(names, "re:.*q_proj") == ["a.q_proj", "a.xq_proj", "q_proj", "b.self_attn.q_proj"]
    assert match_targets(names, "re:v_proj") == []  # full match, as PEFT does
    with pytest.raises(AsftError, match="invalid target regex"):
        match_targets(names, "re:(")


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_refusals_name_the_file(pair, tmp_path):
    base, aligned = pair
    d = _copy(base, tmp_path / "noconfig")
    (d / "config.json").unlink()
    with pytest.raises(AsftError, match=f"{d}: no config.json"):
        build_anchor(d, aligned)
    d = _copy(base, tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(AsftError, match=f"{d}: no \\*.safetensors"):
        build_anchor(d, aligned)
    other, _ = make_llama_pair(tmp_path / "other", hidden=32, heads=4, kv_heads=2)
    with pytest.raises(AsftError) as e:
        build_anchor(base, other)
    assert f"{other} does not match {base}: config hidden_size is 32, base has 64" in str(e.value)
    with pytest.raises(AsftError, match=f"{aligned}: no 2-D weight matches the targets re:.*layernorm"):
        build_anchor(base, aligned, targets="re:.*layernorm")  # only 1-D weights match
    with pytest.raises(AsftError, match=f"{aligned}: no 2-D weight matches the targets gate,up"):
        build_anchor(base, aligned, targets="gate,up")
    with pytest.raises(AsftError, match="is the base model"):
        build_anchor(base, base)


def test_existing_output_needs_overwrite(pair, tmp_path):
    out = tmp_path / "a.safetensors"
    out.write_text("old")
    with pytest.raises(AsftError, match=f"{out}: output exists"):
        build_anchor(*pair, out=out)
    assert out.read_text() == "old"
    build_anchor(*pair, out=out, overwrite=True)
    assert list(load_anchor(out).entries) == QV


def test_identical_models_are_refused_and_leave_no_file(pair, tmp_path):
    twin = _copy(pair[0], tmp_path / "twin")
    out = tmp_path / "out" / "a.safetensors"
    with pytest.raises(AsftError, match=f"{twin}: identical to {pair[0]} on every target module"):
        build_anchor(pair[0], twin, out=out)
    assert list(out.parent.iterdir()) == []


def test_failure_midway_leaves_no_partial_file(pair, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = ModelFolder.get_tensor

    def flaky(self, name):
        calls["n"] += 1
        if calls["n"] == 5:  # third module, after two were written
            raise RuntimeError("disk on fire")
        return real(self, name)

    monkeypatch.setattr(ModelFolder, "get_tensor", flaky)
    out = tmp_path / "out" / "a.safetensors"
    with pytest.raises(RuntimeError, match="disk on fire"):
        build_anchor(*pair, out=out)
    assert calls["n"] == 5
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary


def test_load_anchor_refusals(pair, tmp_path):
    with pytest.raises(AsftError, match=f"{tmp_path / 'none.safetensors'}: anchor file not found"):
        load_anchor(tmp_path / "none.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_text("this is not a safetensors file")
    with pytest.raises(AsftError, match=f"{junk}: not a safetensors file"):
        load_anchor(junk)
    with pytest.raises(AsftError, match=f"{pair[0] / 'model.safetensors'}: not an asft anchor file"):
        load_anchor(pair[0] / "model.safetensors")


def test_load_anchor_refuses_an_incomplete_file(exact_file, tmp_path):
    from safetensors import safe_open

    with safe_open(exact_file, "pt") as f:
        md, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    del tensors["model.layers.1.self_attn.q_proj.norm"]
    bad = tmp_path / "incomplete.safetensors"
    save_file(tensors, bad, metadata=md)
    with pytest.raises(AsftError, match=f"{bad}: anchor is incomplete: no tensor model.layers.1.self_attn.q_proj.norm"):
        load_anchor(bad)


def test_check_anchor_matches_folders(pair, sharded_pair, exact_file, tmp_path):
    anchor = load_anchor(exact_file)
    check_anchor_matches(anchor, pair[1])
    check_anchor_matches(anchor, str(sharded_pair[1]))  # same weights, other layout
    with pytest.raises(AsftError, match=f"{exact_file}: anchor does not belong to {pair[0]}: it is the base model"):
        check_anchor_matches(anchor, pair[0])
    other, _ = make_llama_pair(tmp_path / "other", seed=7)
    with pytest.raises(AsftError, match=f"{exact_file}: anchor does not belong to {other}: fingerprint differs"):
        check_anchor_matches(anchor, other)


def test_check_anchor_matches_modules(pair, exact_file, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    from _models import tiny_llama_config

    anchor = load_anchor(exact_file)
    model = LlamaForCausalLM.from_pretrained(pair[1])
    check_anchor_matches(anchor, model)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert "base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight" in dict(peft_model.named_parameters())
    check_anchor_matches(anchor, peft_model)
    narrow = LlamaForCausalLM(tiny_llama_config(hidden=32))
    with pytest.raises(AsftError, match=rf"{exact_file}: anchor does not belong to .*q_proj.weight has shape \(32, 32\), anchor \(64, 64\)"):
        check_anchor_matches(anchor, narrow)
    shallow = LlamaForCausalLM(tiny_llama_config(layers=1))
    with pytest.raises(AsftError, match=f"{exact_file}: anchor does not belong to .*: the model has no module model.layers.1.self_attn.q_proj"):
        check_anchor_matches(anchor, shallow)


def _rotation(n, seed):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q.float()


def test_left_factors_exact_and_energy():
    # V = P diag(4, 2, 1, 0.5) Q^T with known singular values; energies 16, 4, 1, 0.25 of 21.25.
    S = torch.tensor([4.0, 2.0, 1.0, 0.5])
    P, Q = _rotation(6, 0)[:, :4], _rotation(5, 1)[:, :4]
    V = P @ torch.diag(S) @ Q.T
    e = AnchorEntry("m", (6, 5), float(V.norm()), V=V)
    U2, S2 = e.left_factors(2)
    assert torch.allclose(S2, S[:2], atol=1e-5)
    assert torch.allclose(U2 @ U2.T, P[:, :2] @ P[:, :2].T, atol=1e-5)  # same subspace, any sign
    assert e.left_factors(2)[0] is not None and e._left is not None
    cached = e._left
    e.left_factors(1)
    assert e._left is cached  # SVD computed once
    assert e.left_factors(energy=16 / 21.25)[1].numel() == 1
    assert e.left_factors(energy=16 / 21.25 + 1e-3)[1].numel() == 2
    assert e.left_factors(energy=0.98)[1].numel() == 3  # (16+4+1)/21.25 = 0.988
    assert e.left_factors(energy=0.99)[1].numel() == 4
    assert e.left_factors(energy=1.0)[1].numel() == 4  # the fifth singular value is zero: not needed
    assert e.left_factors()[1].numel() == 5
    with pytest.raises(AsftError, match="m: asked for the top 6"):
        e.left_factors(6)
    with pytest.raises(AsftError, match="not both"):
        e.left_factors(2, energy=0.5)


def test_left_factors_low_rank_use_the_full_norm():
    U = _rotation(4, 2)[:, :2]
    e = AnchorEntry("m", (4, 3), 3.0, U=U, S=torch.tensor([2.0, 1.0]), Vh=_rotation(3, 3)[:2])
    Uk, Sk = e.left_factors(1)
    assert torch.equal(Uk, U[:, :1]) and torch.equal(Sk, torch.tensor([2.0]))
    assert e.left_factors(energy=0.5)[1].numel() == 2  # 4/9 < 0.5 <= 5/9
    with pytest.raises(AsftError, match="m: the stored rank-2 anchor holds 0.556 of"):
        e.left_factors(energy=0.9)


def test_inspect_numbers_match_hand_computation():
    anchor = Anchor(
        {
            # singular values 4, 3; ||V||_F = 5; max eig of C = 16/5; energy in top 1 = 16/25
            "a": AnchorEntry("a", (3, 2), 5.0, V=torch.tensor([[4.0, 0.0], [0.0, 3.0], [0.0, 0.0]])),
            # V = I_9: ||V||_F = 3, sigma_1 = 1 -> max eig 1/3 < 0.5: close to an L2 penalty
            "b": AnchorEntry("b", (9, 9), 3.0, V=torch.eye(9)),
            # stored rank 2 of a V with full norm 3
            "c": AnchorEntry("c", (4, 3), 3.0, U=_rotation(4, 2)[:, :2], S=torch.tensor([2.0, 1.0]), Vh=_rotation(3, 3)[:2]),
        },
        metadata={},
    )
    rows = {r["module"]: r for r in inspect_anchor(anchor, top=2, k=1)}
    a, b, c = rows["a"], rows["b"], rows["c"]
    assert a["norm"] == 5.0 and a["singular_values"] == pytest.approx([4.0, 3.0])
    assert a["c_max_eig"] == pytest.approx(16 / 5) and a["energy_top_k"] == pytest.approx(16 / 25)
    assert a["rank"] == 2 and a["exact"] and a["verdict"] is None
    assert b["c_max_eig"] == pytest.approx(1 / 3) and b["energy_top_k"] == pytest.approx(1 / 9)
    assert b["rank"] == 9 and "close to a plain L2 penalty" in b["verdict"]
    assert f"{(1 - 1 / 3) ** 2:.2f} ||BA||^2" in b["verdict"]
    assert c["c_max_eig"] == pytest.approx(4 / 3) and c["energy_top_k"] == pytest.approx(4 / 9)
    assert c["rank"] == 2 and not c["exact"]


def test_cli_end_to_end(pair, tmp_path, capsys):
    out = tmp_path / "cli.safetensors"
    base, aligned = map(str, pair)
    assert main(["anchor", "--base", base, "--aligned", aligned, "--out", str(out), "--rank", "3"]) == 0
    anchor = load_anchor(out)
    assert list(anchor.entries) == QV and anchor.entries[QV[0]].U.shape == (64, 3)
    assert f"wrote {out}: 4 modules, rank 3" in capsys.readouterr().out

    assert main(["anchor", "--base", base, "--aligned", aligned, "--out", str(out)]) == 2
    assert f"asft anchor: error: {out}: output exists" in capsys.readouterr().err

    assert main(["anchor", "--base", base, "--aligned", aligned, "--out", str(out), "--overwrite",
                 "--target-regex", r".*\.0\.self_attn\.q_proj"]) == 0
    assert list(load_anchor(out).entries) == ["model.layers.0.self_attn.q_proj"]

    assert main(["anchor", "--inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in printed and "max eig C" in printed
    assert "near zero" in printed  # random perturbation: sigma_1^2 / ||V||_F is tiny

    assert main(["anchor", "--base", base, "--aligned", aligned, "--out", str(out), "--targets", "q_proj",
                 "--target-regex", "x"]) == 2
    assert main(["anchor", "--base", base]) == 2
    assert "missing --aligned, --out" in capsys.readouterr().err


def test_load_anchor_to_device(exact_file):
    anchor = load_anchor(exact_file, device="cpu")
    e = anchor.entries[QV[0]]
    assert e.V.device.type == "cpu" and anchor.path == exact_file
    assert math.isfinite(e.norm)


def test_anchor_from_a_harmful_adapter_equals_the_anchor_of_the_merged_model(tmp_path):
    """No base published: the unaligned side is the aligned model fine-tuned on harmful data, given
    as its LoRA adapter. V = W_aligned - (W_aligned + s B A) = -s B A, the same as the anchor against
    the merged harmful model (asft merge), and exactly rank r."""
    import torch
    from peft import LoraConfig, get_peft_model

    from _models import make_llama_pair
    from asft.models.anchor import build_anchor, load_anchor
    from asft.models.modeling import load_model
    from asft.training.merge import merge

    _, aligned = make_llama_pair(tmp_path, seed=0)
    from _eval_tiny import byte_tokenizer

    byte_tokenizer().save_pretrained(aligned)
    torch.manual_seed(3)
    peft = get_peft_model(load_model(aligned), LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    for n, p in peft.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # a "trained" adapter
    peft.save_pretrained(tmp_path / "harm-adapter")
    merge(aligned, tmp_path / "harm-adapter", tmp_path / "harm-merged")
    via_adapter = load_anchor(build_anchor(tmp_path / "harm-adapter", aligned, out=tmp_path / "a.safetensors").path)
    via_merged = load_anchor(build_anchor(tmp_path / "harm-merged", aligned, out=tmp_path / "m.safetensors").path)
    assert sorted(via_adapter.entries) == sorted(via_merged.entries) and len(via_adapter.entries) == 4
    for name, e in via_adapter.entries.items():
        torch.testing.assert_close(e.V, via_merged.entries[name].V, rtol=1e-4, atol=1e-6)
        assert torch.linalg.matrix_rank(e.V.double(), rtol=1e-6) == 4
    with pytest.raises(AsftError, match="no LoRA weights for 2 target modules"):
        build_anchor(tmp_path / "harm-adapter", aligned, targets="q_proj,v_proj,k_proj")
