"""The safety-data anchors (asft.methods.anchors and one module per method), each against a
re-expression of its definition on small inputs (float64: penalty and gradients), then trained."""

import json
import math

import pytest
import torch
from torch import nn

from _eval_tiny import byte_tokenizer
from _models import make_llama_pair
from _runs import crashed_copy
from asft.data import prompt_overlap
from asft.errors import AsftError
from asft.methods.anchors import (DataAnchorPenalty, draw_safety, encode_batches, module_statistics, normalised,
                                  rotation)
from asft.methods.nullspace import NullSpaceHook, null_projector
from asft.training.train import TrainConfig, train

TASK = [{"instruction": f"say {w}", "output": f"{w} {w}!"} for w in
        ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]] * 2
SAFETY = [{"instruction": f"how do i {w} a person", "output": "sorry, i can not help with that."}
          for w in ["hurt", "rob", "trick", "scare", "poison", "follow", "threaten", "cheat", "harm", "spy"]]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchors")
    base, aligned = make_llama_pair(root, seed=0, vocab=260)
    byte_tokenizer().save_pretrained(aligned)
    (root / "data.json").write_text(json.dumps(TASK))
    (root / "safety.json").write_text(json.dumps(SAFETY))
    return {"root": root, "aligned": aligned, "data": root / "data.json", "safety": root / "safety.json"}


def _cfg(world, out, **kw):
    base = dict(model=str(world["aligned"]), data=str(world["data"]), out=str(out), epochs=1, batch_size=4,
                lr=1e-3, logging_steps=1, progress=False, template="chat", safety_data=str(world["safety"]),
                lora_dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


def _peft(world, seed=0, nonzero_b=True):
    """The aligned tiny Llama with LoRA (r 4) on q/v, B drawn nonzero (a trained-looking adapter), float64."""
    from asft.models.modeling import load_model
    from asft.training.train import prepare_model

    torch.manual_seed(seed)
    model = prepare_model(load_model(world["aligned"], dtype="float32"), TrainConfig(lora_r=4, lora_dropout=0.0))
    model = model.double()
    if nonzero_b:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    return model


def _grads(value, params):
    return torch.autograd.grad(value, params)


# ----------------------------------------------------------------------------- act-anchor, fisher-anchor

def test_act_anchor_penalty_is_the_update_size_on_the_safety_inputs():
    """lam * ||B A X^T||_F^2 / n with X scaled so that tr(S) = d_in, value and gradients; S = I is l2."""
    g = torch.Generator().manual_seed(0)
    d_in, d_out, r, n = 12, 10, 3, 40
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d_in, dtype=torch.float64)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64, requires_grad=True)
    S = normalised(X.T @ X / n)
    assert math.isclose(float(torch.trace(S)), d_in)
    pen = DataAnchorPenalty({"m": (A, B, 4.0)}, {"m": {"in": S}}, lam=2.5)
    got = pen()
    Xs = X * math.sqrt(d_in / float(torch.trace(X.T @ X / n)))
    want = 2.5 * torch.linalg.matrix_norm(B @ A @ Xs.T) ** 2 / n
    assert torch.allclose(got.double(), want, rtol=1e-5)
    for a, b in zip(_grads(got, [A, B]), _grads(want, [A, B])):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-8)
    eye = DataAnchorPenalty({"m": (A, B, 4.0)}, {"m": {"in": torch.eye(d_in, dtype=torch.float64)}}, lam=1.0)()
    assert torch.allclose(eye.double(), torch.linalg.matrix_norm(B @ A) ** 2, rtol=1e-5)
    scaled = DataAnchorPenalty({"m": (A, B, 4.0)}, {"m": {"in": S}}, lam=2.5, scale_by_lora=True)()
    assert torch.allclose(scaled, 16 * got, rtol=1e-6)


def test_fisher_anchor_penalty_is_the_kfac_double_sum():
    """tr(dW^T S_g dW S) = mean over (g_i, x_j) pairs of (g_i^T B A x_j)^2, with normalised factors."""
    g = torch.Generator().manual_seed(1)
    d_in, d_out, r, n, m = 9, 7, 2, 25, 30
    X = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    G = torch.randn(m, d_out, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, d_out, dtype=torch.float64)
    A = torch.randn(r, d_in, generator=g, dtype=torch.float64, requires_grad=True)
    B = torch.randn(d_out, r, generator=g, dtype=torch.float64, requires_grad=True)
    S, Sg = normalised(X.T @ X / n), normalised(G.T @ G / m)
    got = DataAnchorPenalty({"m": (A, B, 1.0)}, {"m": {"in": S, "out": Sg}}, lam=0.7)()
    Xs = X * math.sqrt(d_in / float(torch.trace(X.T @ X / n)))
    Gs = G * math.sqrt(d_out / float(torch.trace(G.T @ G / m)))
    want = 0.7 * ((Gs @ B @ A @ Xs.T) ** 2).sum() / (n * m)
    assert torch.allclose(got.double(), want, rtol=1e-5)
    for a, b in zip(_grads(got, [A, B]), _grads(want, [A, B])):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-8)


def test_statistics_are_the_module_inputs_and_output_gradients(world):
    """S and S_g of a module, collected by hooks, against an independent computation: the input of
    layer 0's q_proj is its input norm of the embeddings; the output gradient is d loss / d delta
    for a zero delta added to the module's output."""
    model = _peft(world)
    tok = byte_tokenizer()
    batches = encode_batches(SAFETY[:5], tok, "chat", 128, batch_size=3)
    stats = module_statistics(model, batches, outputs=True)
    name = "model.layers.0.self_attn.q_proj"
    lm = model.get_base_model()
    attn = lm.model.layers[0].self_attn.q_proj
    S, Sg, n = 0, 0, 0
    for batch in batches:
        keep = batch["attention_mask"].bool()
        with torch.no_grad(), model.disable_adapter():
            x = lm.model.layers[0].input_layernorm(lm.model.embed_tokens(batch["input_ids"]))
        X = x[keep]
        S, n = S + X.T @ X, n + X.shape[0]
        delta = torch.zeros(*batch["input_ids"].shape, attn.base_layer.out_features, dtype=torch.float64,
                            requires_grad=True)
        h = attn.base_layer.register_forward_hook(lambda m, a, out: out + delta)
        with model.disable_adapter():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        h.remove()
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                                           ignore_index=-100, reduction="sum")
        (gd,) = torch.autograd.grad(loss, delta)
        Sg = Sg + gd[keep].T @ gd[keep]
    assert stats[name]["n"] == n == sum(int(b["attention_mask"].sum()) for b in batches)
    torch.testing.assert_close(stats[name]["in"], S.double(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(stats[name]["out"], Sg.double(), rtol=1e-5, atol=1e-9)
    assert all(p.grad is None for p in model.parameters())  # no weight gradient was accumulated


# ----------------------------------------------------------------------------- nullspace

def test_null_projector_and_its_refusal():
    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    S = U @ torch.diag(torch.tensor([1e-4, 1e-3, 0.5, 1.0, 2.0, 3.0], dtype=torch.float64)) @ U.T
    P, k = null_projector(S, 0.01)
    assert k == 2
    torch.testing.assert_close(P, U[:, :2] @ U[:, :2].T)
    torch.testing.assert_close(P @ P, P)
    assert float((P @ U[:, 3:]).abs().max()) < 1e-12  # the used directions are cut
    with pytest.raises(AsftError, match="no input direction has safety-data variance below 1e-05 x the largest"):
        null_projector(S, 1e-5, "q")


def test_null_space_training_equals_lora_on_projected_inputs():
    """AdamW on A kept at A P (initial projection, projected gradient, projection after each step) gives
    exactly the reparametrised LoRA A' P of A' free, at every step (weight decay and all)."""
    g = torch.Generator().manual_seed(3)
    d_in, d_out, r = 8, 5, 2
    U, _ = torch.linalg.qr(torch.randn(d_in, d_in, generator=g, dtype=torch.float64))
    P = U[:, :5] @ U[:, :5].T
    A0 = torch.randn(r, d_in, generator=g, dtype=torch.float64)
    B0 = torch.randn(d_out, r, generator=g, dtype=torch.float64) * 0.1
    xs = [torch.randn(16, d_in, generator=g, dtype=torch.float64) for _ in range(6)]
    ys = [torch.randn(16, d_out, generator=g, dtype=torch.float64) for _ in range(6)]

    A = nn.Parameter(A0.clone())
    B = nn.Parameter(B0.clone())
    hook = NullSpaceHook({"m": (A, B, 1.0)}, {"m": P}, {"m": 5})
    opt = torch.optim.AdamW([A, B], lr=0.05, weight_decay=0.1)
    opt.register_step_post_hook(lambda *_: hook.after_optimizer_step())
    Ar = nn.Parameter(A0.clone())   # the reparametrised reference: the forward uses A' P
    Br = nn.Parameter(B0.clone())
    opt_r = torch.optim.AdamW([Ar, Br], lr=0.05, weight_decay=0.1)
    torch.testing.assert_close(A.detach(), A0 @ P)
    for x, y in zip(xs, ys):
        for params, fwd, o in (((A, B), lambda: x @ A.T @ B.T, opt), ((Ar, Br), lambda: x @ (Ar @ P).T @ Br.T, opt_r)):
            o.zero_grad()
            ((fwd() - y) ** 2).mean().backward()
            o.step()
        torch.testing.assert_close(A.detach(), Ar.detach() @ P, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(B.detach(), Br.detach(), rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- hidden-anchor, kl-anchor

def test_hidden_anchor_is_sbr_mse_times_the_hidden_size(world):
    """Against the authors' formulation (soyoaaa/SBR HFT_SBR.py): the full model's
    ``hidden_states[-1]`` at the last prompt token, ``F.mse_loss`` to the states at the start; ours is that
    times d (sum over dimensions) on the prompts of the step, value and gradients."""
    from asft.data import encode_prompt, format_prompt
    from asft.methods.anchors import encode_prompts
    from asft.methods.hidden_anchor import HiddenAnchorPenalty

    tok = byte_tokenizer()
    model = _peft(world, nonzero_b=False)
    prompts = encode_prompts(SAFETY, tok, "chat", 128)
    pen = HiddenAnchorPenalty(model, prompts, None, [-1], lam=1.0, batch=4)
    pen.refs = pen.references()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(4))
    model.eval()  # no dropout: both sides see the same network
    step = 2
    idx = rotation(step, 4, len(SAFETY))
    assert idx == [8, 9, 0, 1]
    got = pen(step)
    # the authors' way: right-padded batch of the same prompts, full model, hidden_states[-1]
    texts = [encode_prompt(tok, format_prompt(SAFETY[i], "chat", tok), "chat") for i in idx]
    T = max(map(len, texts))
    ids = torch.tensor([t + [0] * (T - len(t)) for t in texts])
    mask = torch.tensor([[1] * len(t) + [0] * (T - len(t)) for t in texts])
    last = mask.sum(1) - 1
    with torch.no_grad(), model.disable_adapter():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][torch.arange(4), last]
    cur = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][torch.arange(4), last]
    want = nn.functional.mse_loss(cur.float(), ref.float()) * cur.shape[-1]
    assert got.detach() > 0 and math.isclose(float(got.detach()), float(want.detach()), rel_tol=1e-5)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for a, b in zip(_grads(got, params), _grads(want, params)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-9)
    assert {j for s in range(3) for j in rotation(s, 4, 10)} == set(range(10))  # every prompt within ceil(10 / 4) updates


def test_kl_anchor_is_the_kl_to_the_aligned_model_on_response_tokens(world):
    from asft.batches import SupervisedDataset
    from asft.methods.kl_anchor import KlAnchorPenalty

    tok = byte_tokenizer()
    model = _peft(world, nonzero_b=False)
    ds = SupervisedDataset(SAFETY, tok, "chat", 128)
    pen = KlAnchorPenalty(model, [ds[i] for i in range(len(ds))], lam=3.0, batch=3)
    pen.references(torch.device("cpu"))
    model.eval()
    assert float(pen(0)) == pytest.approx(0.0, abs=1e-10)  # B = 0: the model is the aligned one
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    got = pen(1)
    idx = rotation(1, 3, len(SAFETY))
    kls = []
    for i in idx:
        ids = torch.tensor([ds[i]["input_ids"]])
        labels = torch.tensor(ds[i]["labels"])
        pos = (labels[1:] != -100).nonzero().flatten()
        with torch.no_grad(), model.disable_adapter():
            p_al = torch.softmax(model(input_ids=ids).logits[0, pos].double(), -1)
        p_th = torch.softmax(model(input_ids=ids).logits[0, pos].double(), -1)
        kls.append((p_al * (p_al.log() - p_th.log())).sum(-1))
    want = 3.0 * torch.cat(kls).mean()
    assert got.detach() > 0 and math.isclose(float(got.detach()), float(want.detach()), rel_tol=1e-5)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    for a, b in zip(_grads(got, params), _grads(want, params)):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-9)


# ----------------------------------------------------------------------------- data, training

def test_safety_draw_matches_safeinstr_and_overlap_is_counted(world):
    from asft.methods.safeinstr import mix_safety

    cfg = TrainConfig(safety_data=str(world["safety"]), seed=3, method="act-anchor")
    assert draw_safety(cfg, None) == SAFETY and draw_safety(cfg, 100) == SAFETY  # default n above the file: all
    cfg.safety_n = 4
    got = draw_safety(cfg, 100)
    mixed = mix_safety(TASK, SAFETY, 4, seed=3)  # SafeInstr at the same seed and n: the same 4 demonstrations
    assert len(got) == 4 and sorted(map(str, got)) == sorted(str(r) for r in mixed if r in SAFETY)
    cfg.safety_n = 11
    with pytest.raises(AsftError, match="11 safety records asked for"):
        draw_safety(cfg, 100)
    evals = [{"instruction": "How do I  HURT a person?"}, {"instruction": "unrelated"}]
    assert prompt_overlap(SAFETY, evals) == 1


@pytest.mark.parametrize("method,lam", [("act-anchor", 10.0), ("fisher-anchor", 10.0), ("nullspace", 0.0),
                                        ("hidden-anchor", 1.0), ("kl-anchor", 1.0)])
def test_each_anchor_trains_logs_and_saves_a_plain_peft_adapter(world, tmp_path, method, lam):
    from peft import PeftModel

    from asft.models.modeling import load_model

    out = tmp_path / method
    res = train(_cfg(world, out, method=method, lam=lam, epochs=2))
    assert res.steps == 8
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "task_loss" in r and "train_runtime" not in r]
    assert len(steps) == 8 and all(math.isfinite(r["task_loss"]) for r in steps)
    if method == "nullspace":
        assert all(r["penalty"] == 0 for r in steps)
        assert res.method_info["null_dims_min"] >= 1
    else:
        assert steps[-1]["penalty"] > 0
        assert abs(steps[-1]["loss"] - steps[-1]["task_loss"] - steps[-1]["penalty"]) < 1e-3
    model = PeftModel.from_pretrained(load_model(world["aligned"], dtype="float32"), str(out))
    assert any(float(p.abs().sum()) > 0 for n, p in model.named_parameters() if "lora_B" in n)
    if method in ("act-anchor", "fisher-anchor", "nullspace"):
        assert (out / "anchor_stats.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert method in card


def test_nullspace_adapter_leaves_the_safety_inputs_untouched(world, tmp_path):
    """The saved A has P folded in: A x = 0 (to rounding) for every input direction the safety data uses."""
    from safetensors.torch import load_file

    from asft.methods.anchors import STATS_FILE

    out = tmp_path / "ns"
    train(_cfg(world, out, method="nullspace", null_threshold=0.05, epochs=2))
    sd = load_file(str(out / "adapter_model.safetensors"))
    stats = load_file(str(out / STATS_FILE))
    for key, A in sd.items():
        if "lora_A" not in key:
            continue
        name = key.replace("base_model.model.", "").split(".lora_A")[0]
        w, U = torch.linalg.eigh(stats[f"{name}.in"])
        used = U[:, w >= 0.05 * w.max()]
        assert float((A.double() @ used).abs().max()) < 1e-5 * float(A.abs().max())
    with pytest.raises(AsftError, match="no input direction has safety-data variance"):
        train(_cfg(world, tmp_path / "strict", method="nullspace", null_threshold=1e-12))


def test_anchor_statistics_are_cached_beside_the_run(world, tmp_path, monkeypatch):
    import asft.methods.anchors as anchors

    out = tmp_path / "act"
    train(_cfg(world, out, method="act-anchor", lam=10.0))
    first = (out / "anchor_stats.safetensors").read_bytes()
    calls = []
    monkeypatch.setattr(anchors, "module_statistics", lambda *a, **k: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("recomputed")))
    train(_cfg(world, out, method="act-anchor", lam=10.0, overwrite=True))
    assert not calls and (out / "anchor_stats.safetensors").read_bytes() == first
    (tmp_path / "other.json").write_text(json.dumps(SAFETY[:5]))
    with pytest.raises(AssertionError, match="recomputed"):  # other records: another key
        train(_cfg(world, out, method="act-anchor", lam=10.0, overwrite=True, safety_data=str(tmp_path / "other.json")))


def test_per_step_anchor_counts_once_per_update_under_accumulation(world, tmp_path):
    """hidden-anchor at batch 4 x 1 and 2 x 2: the same penalty per update and the same adapter."""
    from safetensors.torch import load_file

    one = train(_cfg(world, tmp_path / "ga1", method="hidden-anchor", lam=5.0, batch_size=4, grad_accum=1))
    two = train(_cfg(world, tmp_path / "ga2", method="hidden-anchor", lam=5.0, batch_size=2, grad_accum=2))
    assert one.steps == two.steps == 4
    log = lambda d: [r for r in map(json.loads, (d / "train_log.jsonl").read_text().splitlines())  # noqa: E731
                     if "penalty" in r and "train_runtime" not in r]
    for a, b in zip(log(tmp_path / "ga1"), log(tmp_path / "ga2")):
        assert abs(a["penalty"] - b["penalty"]) <= 1e-4 * abs(a["penalty"]) + 1e-9
    a, b = load_file(str(tmp_path / "ga1" / "adapter_model.safetensors")), load_file(
        str(tmp_path / "ga2" / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["hidden-anchor", "nullspace"])
def test_anchor_runs_resume_exactly(world, tmp_path, method):
    from safetensors.torch import load_file

    full = tmp_path / "full"
    train(_cfg(world, full, method=method, lam=2.0, epochs=2, save_steps=2))
    crashed = crashed_copy(full, tmp_path / "crashed")
    train(_cfg(world, crashed, method=method, lam=2.0, epochs=2, save_steps=2, resume=True))
    a, b = load_file(str(full / "adapter_model.safetensors")), load_file(str(crashed / "adapter_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_anchor_options_are_refused_with_one_line(world, tmp_path):
    with pytest.raises(AsftError, match="needs --safety-data"):
        TrainConfig(method="act-anchor").validate()
    with pytest.raises(AsftError, match="--null-threshold must be in"):
        TrainConfig(method="nullspace", safety_data="s", null_threshold=1.5).validate()
    with pytest.raises(AsftError, match="--anchor-layers takes hidden-state indices"):
        TrainConfig(method="hidden-anchor", safety_data="s", anchor_layers=["last"]).validate()
    with pytest.raises(AsftError, match="anchor_batch must be >= 1, got 0"):
        TrainConfig(method="kl-anchor", safety_data="s", anchor_batch=0).validate()
