"""LoRA training with the penalty: outputs, logging, accumulation, config, errors, merge."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from _eval_tiny import byte_tokenizer
from _models import make_llama_pair
from _runs import crashed_copy
from asft.models.anchor import build_anchor
from asft.errors import AsftError
from asft.training.merge import merge
from asft.training.train import TrainConfig, train

RECORDS = [{"instruction": f"say {w}", "output": f"{w} {w}!"} for w in
           ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]] * 2


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base/aligned pair with a byte tokenizer, its anchor, and a data file."""
    root = tmp_path_factory.mktemp("train")
    base, aligned = make_llama_pair(root, seed=0, vocab=260)
    byte_tokenizer().save_pretrained(aligned)
    anchor = root / "anchor.safetensors"
    build_anchor(base, aligned, out=anchor)
    data = root / "data.json"
    data.write_text(json.dumps(RECORDS))
    return {"root": root, "base": base, "aligned": aligned, "anchor": anchor, "data": data}


def _cfg(world, out, **kw):
    base = dict(model=str(world["aligned"]), data=str(world["data"]), out=str(out), epochs=1,
                batch_size=4, lr=1e-3, logging_steps=1, progress=False, anchor=str(world["anchor"]),
                template="chat")
    base.update(kw)
    return TrainConfig(**base)


def _lora_state(out):
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def _update_norm2(out):
    """sum over modules of ||B A||_F^2 of a saved adapter."""
    sd = _lora_state(out)
    total = 0.0
    for k, A in sd.items():
        if "lora_A" in k:
            B = sd[k.replace("lora_A", "lora_B")]
            total += float(((B @ A).double() ** 2).sum())
    return total


@pytest.mark.parametrize("method", ["sft", "asft", "l2"])
def test_each_method_writes_adapter_config_and_separate_logs(world, tmp_path, method):
    res = train(_cfg(world, tmp_path / method, method=method))
    out = tmp_path / method
    for f in ("adapter_model.safetensors", "adapter_config.json", "config.yaml", "train_log.jsonl",
              "train_summary.json"):
        assert (out / f).is_file(), f
    assert not (out / "checkpoints").exists()
    assert res.steps == 4  # 16 records / batch 4, one epoch
    logs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in logs if "task_loss" in r]
    assert len(steps) == 4 and all(math.isfinite(r["task_loss"]) for r in steps)
    if method == "sft":
        assert all(r["penalty"] == 0 for r in steps)
    else:  # B starts at zero, so the penalty is 0 at step 1 and positive once B has moved
        assert steps[-1]["penalty"] > 0
        # the logged loss is task + penalty
        assert abs(steps[-1]["loss"] - steps[-1]["task_loss"] - steps[-1]["penalty"]) < 1e-3
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == method and saved["lora_r"] == 8 and saved["lr"] == 1e-3
    assert (res.c_max_eig is not None) == (method == "asft")


def test_penalty_shrinks_the_update(world, tmp_path):
    # Same seed and data: a large lambda must leave a much smaller B A than no penalty.
    free = train(_cfg(world, tmp_path / "free", method="sft", epochs=2, lora_dropout=0.0))
    held = train(_cfg(world, tmp_path / "held", method="asft", lam=1e3, epochs=2, lora_dropout=0.0))
    assert free.steps == held.steps
    assert _update_norm2(tmp_path / "held") < 0.2 * _update_norm2(tmp_path / "free")


def test_gradient_accumulation_counts_penalty_once_per_update(world, tmp_path):
    one = _cfg(world, tmp_path / "ga1", method="asft", lam=50.0, batch_size=4, grad_accum=1,
               lora_dropout=0.0, dtype="float32")
    two = _cfg(world, tmp_path / "ga2", method="asft", lam=50.0, batch_size=2, grad_accum=2,
               lora_dropout=0.0, dtype="float32")
    train(one)
    train(two)
    a, b = _lora_state(tmp_path / "ga1"), _lora_state(tmp_path / "ga2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_step_lr_decays_per_epoch(world, tmp_path):
    train(_cfg(world, tmp_path / "lr", method="sft", epochs=3, lr_gamma=0.5))
    logs = [json.loads(x) for x in (tmp_path / "lr" / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["learning_rate"] for r in logs if "learning_rate" in r]
    # 4 updates per epoch; the lr logged after update i is the one for update i + 1
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[4] == pytest.approx(0.5e-3)
    assert lrs[8] == pytest.approx(0.25e-3)


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: l2\nlam: 3\nlora_r: 4\n")
    cfg = TrainConfig.from_yaml(path, lam=5.0, lr=None)
    assert (cfg.method, cfg.lam, cfg.lora_r, cfg.lr) == ("l2", 5.0, 4, 5e-5)
    path.write_text("lamda: 3\n")
    with pytest.raises(AsftError, match="c.yaml: unknown option 'lamda'"):
        TrainConfig.from_yaml(path)
    # YAML reads 5e-5 as a string; a comma list of targets is a list
    path.write_text("lr: 5e-5\nlam: 1e-3\ntargets: q_proj,v_proj\nepochs: 2\nlimit: 10\n")
    cfg = TrainConfig.from_yaml(path)
    assert (cfg.lr, cfg.lam, cfg.targets, cfg.epochs, cfg.limit) == (5e-5, 1e-3, ["q_proj", "v_proj"], 2.0, 10)
    path.write_text("lora_r: eight\n")
    with pytest.raises(AsftError, match="c.yaml: option 'lora_r' should be int"):
        TrainConfig.from_yaml(path)
    # before: paths in the file resolved against the working folder; now against the file's folder
    (tmp_path / "cfgs").mkdir()
    nested = tmp_path / "cfgs" / "c.yaml"
    nested.write_text("model: ../models/m\ndata: d.json\nout: /abs/out\nanchor: ~/a.safetensors\n")
    cfg = TrainConfig.from_yaml(nested, data="flag.json")
    assert Path(cfg.model) == tmp_path / "cfgs" / ".." / "models" / "m" and cfg.out == "/abs/out"
    assert cfg.data == "flag.json" and cfg.anchor == str(Path("~/a.safetensors").expanduser())


def test_bad_inputs_give_clear_errors(world, tmp_path):
    with pytest.raises(AsftError, match="needs --anchor"):
        train(_cfg(world, tmp_path / "x", method="asft", anchor=None))
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "a", "output": "b"},')
    with pytest.raises(AsftError, match="bad.json: malformed JSON"):
        train(_cfg(world, tmp_path / "x", method="sft", data=str(bad)))
    latin = tmp_path / "latin1.jsonl"  # a file saved in Latin-1, not UTF-8: one line, not a traceback
    latin.write_bytes('{"instruction": "a", "output": "b"}\n{"instruction": "caf\u00e9", "output": "c"}\n'.encode("latin-1"))
    with pytest.raises(AsftError, match=r"latin1.jsonl: not UTF-8 text \(byte 56, line 2\)"):
        train(_cfg(world, tmp_path / "x", method="sft", data=str(latin)))
    with pytest.raises(AsftError, match="model folder not found"):
        train(_cfg(world, tmp_path / "x", method="sft", model=str(tmp_path / "nope")))
    # an anchor computed from another model pair is refused
    other_base, other_aligned = make_llama_pair(tmp_path / "other", seed=5, vocab=260)
    other = tmp_path / "other.safetensors"
    build_anchor(other_base, other_aligned, out=other)
    with pytest.raises(AsftError, match="does not belong"):
        train(_cfg(world, tmp_path / "x", method="asft", anchor=str(other)))
    train(_cfg(world, tmp_path / "done", method="sft"))
    with pytest.raises(AsftError, match="already holds a finished run"):
        train(_cfg(world, tmp_path / "done", method="sft"))


@pytest.mark.parametrize("bad,message", [
    ({"lr": float("nan")}, "lr must be a finite number > 0, got nan"),
    ({"lr": -1.0}, "lr must be a finite number > 0, got -1.0"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"epochs": 0}, "epochs must be a finite number > 0, got 0"),
    ({"epochs": -1}, "epochs must be a finite number > 0, got -1"),
    ({"lr_gamma": float("nan")}, r"lr_gamma must be in \(0, 1\]"),
    ({"lr_gamma": 1.5}, r"lr_gamma must be in \(0, 1\]"),
    ({"weight_decay": -0.1}, "weight_decay must be a finite number >= 0"),
    ({"lora_dropout": 1.0}, "lora_dropout must be < 1"),
    ({"save_steps": -1}, "save_steps must be >= 0"),
    ({"limit": 0}, "limit must be >= 1"),
    ({"limit": -3}, "limit must be >= 1"),
    ({"logging_steps": 0}, "logging_steps must be >= 1"),
])
def test_bad_numbers_are_refused_before_anything_is_written(world, tmp_path, bad, message):
    """Before: --epochs 0 wrote an untrained adapter (loss nan), --limit -3 trained on N-3 records,
    --lr nan failed in torch's AdamW after config, log and checkpoints/ were written. Now one line,
    nothing written."""
    out = tmp_path / "out"
    with pytest.raises(AsftError, match=message):
        train(_cfg(world, out, method="sft", **bad))
    assert not out.exists()
    train(_cfg(world, tmp_path / "ok", method="sft", epochs=0, max_steps=1))  # epochs do not count with max_steps


def test_resume_without_checkpoints_is_refused(world, tmp_path):
    with pytest.raises(AsftError, match="no checkpoint to resume from"):
        train(_cfg(world, tmp_path / "nothing", method="sft", resume=True))


def test_non_finite_loss_stops_with_a_clear_error(world, tmp_path):
    with pytest.raises(AsftError, match="not finite"):
        train(_cfg(world, tmp_path / "nan", method="l2", lam=1e38, epochs=2))  # lam * ||BA||^2 overflows


def test_merge_equals_adapter_model(world, tmp_path):
    from asft.models.modeling import load_adapter, load_model

    train(_cfg(world, tmp_path / "ad", method="sft", lora_dropout=0.0))
    merged_dir = merge(world["aligned"], tmp_path / "ad", tmp_path / "merged", dtype="float32")
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    with torch.no_grad():
        peft = load_adapter(load_model(world["aligned"], dtype="float32", device="cpu"), tmp_path / "ad")
        merged = load_model(merged_dir, dtype="float32", device="cpu")
        plain = load_model(world["aligned"], dtype="float32", device="cpu")
        a, b, c = (m(ids).logits for m in (peft, merged, plain))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (a - c).abs().max() > 1e-3  # the adapter really changed the model
    assert (merged_dir / "tokenizer_config.json").is_file()
    with pytest.raises(AsftError, match="exists and is not empty"):
        merge(world["aligned"], tmp_path / "ad", merged_dir)
    with pytest.raises(AsftError, match="refusing to write the merged model over"):
        merge(world["aligned"], tmp_path / "ad", world["aligned"], overwrite=True)
    with pytest.raises(AsftError, match="refusing to write the merged model over"):
        merge(world["aligned"], tmp_path / "ad", world["aligned"].parent, overwrite=True)
    # a bf16 checkpoint stays bf16 with dtype "auto"
    bf16_dir = tmp_path / "bf16"
    load_model(world["aligned"], dtype="bfloat16", device="cpu").save_pretrained(bf16_dir)
    byte_tokenizer().save_pretrained(bf16_dir)
    merged = merge(bf16_dir, tmp_path / "ad", tmp_path / "merged16")
    from safetensors import safe_open

    with safe_open(str(merged / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.layers.0.self_attn.q_proj.weight").dtype == torch.bfloat16


def test_cli_train(world, tmp_path):
    from asft.cli import main

    rc = main(["train", "--model", str(world["aligned"]), "--data", str(world["data"]), "--out",
               str(tmp_path / "cli"), "--method", "l2", "--lam", "2", "--epochs", "1", "--batch-size", "8",
               "--template", "chat", "--quiet", "--targets", "q_proj,k_proj"])
    assert rc == 0
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["targets"] == ["q_proj", "k_proj"] and saved["lam"] == 2.0
    assert main(["train", "--model", str(world["aligned"]), "--data", str(world["data"]), "--out",
                 str(tmp_path / "cli"), "--method", "l2", "--quiet", "--template", "chat"]) == 2


def test_resume_after_interruption_matches_uninterrupted_run(world, tmp_path):
    full = tmp_path / "full"
    train(_cfg(world, full, method="asft", lam=5.0, epochs=2, lora_dropout=0.0, save_steps=2))
    ckpts = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    # Simulate a crash after step 5: later checkpoints and the final adapter never got written.
    crashed = crashed_copy(full, tmp_path / "crashed")
    res = train(_cfg(world, crashed, method="asft", lam=5.0, epochs=2, lora_dropout=0.0, save_steps=2,
                     resume=True))
    assert res.steps == 8
    a, b = _lora_state(full), _lora_state(crashed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_bf16_and_gradient_checkpointing_run(world, tmp_path):
    """Gradient checkpointing recomputes activations, it must not change training: the adapters
    with and without it match (float32: to rounding; bf16: to bf16 precision), and bf16 training
    learns the same update as float32 up to bf16's precision."""
    from safetensors.torch import load_file

    kw = dict(method="asft", lora_dropout=0.0, epochs=2)
    ad = {}
    for name, extra in {"f32": dict(dtype="float32"), "f32ck": dict(dtype="float32", gradient_checkpointing=True),
                        "bf16": dict(dtype="bfloat16"), "bf16ck": dict(dtype="bfloat16", gradient_checkpointing=True)}.items():
        res = train(_cfg(world, tmp_path / name, **kw, **extra))
        assert res.steps == 8 and math.isfinite(res.task_loss) and res.penalty > 0
        ad[name] = load_file(str(tmp_path / name / "adapter_model.safetensors"))
    for k in ad["f32"]:
        torch.testing.assert_close(ad["f32ck"][k], ad["f32"][k], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(ad["bf16ck"][k].float(), ad["bf16"][k].float(), rtol=2e-2, atol=1e-3)
        if "lora_B" in k:  # B starts at 0: what training learnt, compared in direction and size
            a, b = ad["bf16"][k].float().flatten(), ad["f32"][k].flatten()
            assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.95, k
            assert abs(a.norm() / b.norm() - 1) < 0.1, k


REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "asft-reference"


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference data not present beside the project")
def test_reference_training_files_load_and_train(world, tmp_path):
    from asft.data import load_records

    files = sorted((REFERENCE / "train").rglob("*.json"))
    assert len(files) >= 25
    counts = {f.name: len(load_records(f)) for f in files}
    assert counts["agnews_1k_p_0.1.json"] == 1100 and counts["gsm8k_1k_p_0.1.json"] == 1000
    harmful = [r for r in load_records(REFERENCE / "train" / "gsm8k" / "gsm8k_1k_p_0.1.json")
               if r["instruction"].endswith("\n\nAssistant:")]
    assert len(harmful) == 100
    # the reference format trains with the reference template; long examples are truncated and counted
    res = train(_cfg(world, tmp_path / "ref", method="l2", data=str(REFERENCE / "train" / "agnews" /
                     "agnews_1k_p_0.1.json"), template="alpaca", limit=16, max_length=330))
    assert res.n_examples + res.n_dropped == 16 and res.n_examples > 0
    assert 0 < res.n_truncated and res.n_dropped < res.n_truncated
    start = json.loads((tmp_path / "ref" / "train_log.jsonl").read_text().splitlines()[0])
    assert (start["examples"], start["dropped"]) == (res.n_examples, res.n_dropped)
    with pytest.raises(AsftError, match="raise --max-length"):  # no prompt fits in 64 byte tokens
        train(_cfg(world, tmp_path / "short", method="sft", data=str(REFERENCE / "train" / "agnews" /
                   "agnews_1k_p_0.1.json"), template="alpaca", limit=8, max_length=64))


def test_adapter_is_bit_identical_at_one_and_two_threads(world, tmp_path):
    """Results do not depend on the thread policy (asft.runtime); only speed does."""
    from safetensors.torch import load_file

    before = torch.get_num_threads()
    out = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            train(_cfg(world, tmp_path / f"t{n}", method="asft", lam=5.0, epochs=2))
            out[n] = load_file(str(tmp_path / f"t{n}" / "adapter_model.safetensors"))
    finally:
        torch.set_num_threads(before)
    assert out[1].keys() == out[2].keys() and len(out[1]) == 8
    for k in out[1]:
        assert torch.equal(out[1][k], out[2][k]), k
    summary = json.loads((tmp_path / "t2" / "train_summary.json").read_text())
    assert summary["env"]["threads"] == 2 and summary["env"]["torch"] == torch.__version__


def test_max_steps_bounds_training_and_keeps_step_lr_per_epoch(world, tmp_path):
    # 16 records, batch 4: 4 updates per epoch; 6 steps = 1.5 epochs, lr halves after step 4
    res = train(_cfg(world, tmp_path / "ms", method="sft", epochs=10, max_steps=6, lr_gamma=0.5))
    assert res.steps == 6
    logs = [json.loads(x) for x in (tmp_path / "ms" / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["learning_rate"] for r in logs if "learning_rate" in r]
    assert lrs == pytest.approx([1e-3] * 4 + [5e-4] * 2)
    with pytest.raises(AsftError, match="max_steps must be >= 1"):
        train(_cfg(world, tmp_path / "bad", method="sft", max_steps=0))


def test_training_prints_no_future_warning_of_peft_internals(world, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_cfg(world, tmp_path / "quiet", method="sft"))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


def test_chat_template_is_checked_before_the_model_is_loaded(world, tmp_path, monkeypatch):
    """A pre-trained model's tokenizer has no chat template: refuse --template chat at once."""
    import shutil

    import asft.models.modeling

    plain = tmp_path / "pretrained"
    shutil.copytree(world["aligned"], plain)
    cfg_path = plain / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    for f in plain.glob("chat_template*"):
        f.unlink()
    monkeypatch.setattr(asft.models.modeling, "load_model", lambda *a, **k: pytest.fail("loaded the model first"))
    with pytest.raises(AsftError, match="pretrained: template 'chat' needs a chat template.*--template alpaca"):
        train(_cfg(world, tmp_path / "x", method="sft", model=str(plain), template="chat"))
    from asft.evaluation.run import run_eval

    with pytest.raises(AsftError, match="template 'chat' needs a chat template"):
        run_eval(plain, ["harmful"], tmp_path, tmp_path / "ev", judge=None, template="chat")


def test_training_prints_plain_progress_lines_when_stderr_is_a_file(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ASFT_PROGRESS_INTERVAL", "0")
    train(_cfg(world, tmp_path / "log", method="sft", progress=True))  # pytest's stderr is not a TTY
    err = capsys.readouterr().err
    assert "training: 0/4 steps" in err and "training: 4/4 steps" in err


def test_group_by_length_cuts_the_padding_and_sees_every_example(world, tmp_path, monkeypatch):
    import asft.data

    # lengths from 1 to 50 words: random batches of 4 are mostly padding. (HF's sampler sorts
    # mega-batches of min(50, n / (4 batch)) batches: 8 batches of 4 here.)
    records = [{"instruction": f"item {i}", "output": " ".join(["w"] * (1 + (i * 37) % 50))} for i in range(128)]
    seen = {}
    real_call = asft.data.PadCollator.__call__

    def spy(self, batch):
        out = real_call(self, batch)
        seen.setdefault(run, []).append((out["input_ids"].numel(), int(out["attention_mask"].sum())))
        return out

    monkeypatch.setattr(asft.data.PadCollator, "__call__", spy)
    for run in ("random", "grouped"):
        train(_cfg(world, tmp_path / run, method="l2", lam=1.0, epochs=1, max_length=256,
                   group_by_length=run == "grouped"), records=records)
    computed = {k: sum(c for c, _ in v) for k, v in seen.items()}
    real = {k: sum(r for _, r in v) for k, v in seen.items()}
    assert real["random"] == real["grouped"]  # the same examples, once each
    assert len(seen["grouped"]) == len(seen["random"]) == 32
    assert computed["grouped"] < 0.8 * computed["random"]  # measured: 10500 vs 13824 tokens
    assert computed["grouped"] < 1.1 * real["grouped"]  # 9874 real tokens


def _gemma3_tiny():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=64,
                           sliding_window=8, final_logit_softcapping=5.0)  # soft-capping: applied to kept rows too
    return Gemma3ForCausalLM(cfg)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_label_positions_only_gives_the_same_loss_and_gradients(arch):
    """The output layer at label positions only (keep_label_positions): the loss and every LoRA
    gradient equal the full forward's, with the mean and with Trainer's num_items_in_batch sum."""
    from peft import LoraConfig, get_peft_model

    from _models import tiny_llama_config
    from asft.training.trainer import keep_label_positions

    torch.manual_seed(0)
    if arch == "llama":
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(tiny_llama_config(vocab=300))
    else:
        model = _gemma3_tiny()
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             init_lora_weights=False))
    ids = torch.randint(0, 300, (3, 20))
    labels = torch.full_like(ids, -100)
    labels[0, 12:17], labels[1, 5:20], labels[2, 18:20] = ids[0, 12:17], ids[1, 5:20], ids[2, 18:20]
    mask = torch.ones_like(ids)
    mask[0, 17:] = 0  # right padding
    inputs = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    sliced = keep_label_positions(model, inputs)
    assert int(sliced["logits_to_keep"].sum()) == len(sliced["shift_labels"]) == 5 + 15 + 2  # every label token once
    for extra in ({}, {"num_items_in_batch": torch.tensor(22)}):
        losses, grads = [], []
        for batch in (inputs, sliced):
            model.zero_grad()
            loss = model(**batch, **extra).loss
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
        for full, cut in zip(*grads):
            torch.testing.assert_close(full, cut, rtol=1e-4, atol=1e-6)
    assert keep_label_positions(model, {"input_ids": ids}) == {"input_ids": ids}  # no labels: unchanged


def test_training_at_label_positions_only_matches_the_full_output_layer(world, tmp_path, monkeypatch):
    """End to end: the adapter trained with the sliced output layer equals the full one's."""
    from asft.training import trainer as train_module

    on = train(_cfg(world, tmp_path / "on", method="asft", lam=1.0, seed=3))
    calls = []
    monkeypatch.setattr(train_module, "keep_label_positions", lambda m, x: calls.append(1) or x)
    off = train(_cfg(world, tmp_path / "off", method="asft", lam=1.0, seed=3))
    assert calls  # the full forward ran
    a, b = _lora_state(on.out), _lora_state(off.out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert on.task_loss == pytest.approx(off.task_loss, rel=1e-5)


def _log_steps(out):
    rows = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "loss" in r or "task_loss" in r]


def test_a_rerun_of_a_killed_run_continues_from_its_last_checkpoint(world, tmp_path, caplog):
    """Before: the same command after a kill silently started again from step 0 (only --resume
    continued), and after --resume the log repeated the redone steps."""
    kw = dict(method="asft", lam=5.0, epochs=2, lora_dropout=0.0, save_steps=2)
    full = tmp_path / "full"
    train(_cfg(world, full, **kw))
    crashed = crashed_copy(full, tmp_path / "crashed")  # killed after checkpoint-4
    with caplog.at_level("WARNING", logger="asft"):
        res = train(_cfg(world, crashed, **kw))
    assert res.resumed_from == 4 and res.steps == 8
    assert "continuing an unfinished run from checkpoint-4" in caplog.text
    a, b = _lora_state(full), _lora_state(crashed)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    steps = _log_steps(crashed)
    assert steps == _log_steps(full) and len(steps) == len(set(steps)) == 8
    assert (crashed / "train_summary.json").is_file() and (crashed / "README.md").is_file()


def test_a_rerun_with_another_config_starts_afresh_and_says_why(world, tmp_path, caplog):
    full = tmp_path / "full"
    train(_cfg(world, full, method="sft", epochs=2, save_steps=2))
    crashed = crashed_copy(full, tmp_path / "crashed")
    with caplog.at_level("WARNING", logger="asft"):
        res = train(_cfg(world, crashed, method="sft", epochs=2, save_steps=2, lr=2e-3))
    assert res.resumed_from is None
    assert "starting afresh: the unfinished run there had another config (lr: 0.001 -> 0.002)" in caplog.text
    assert _log_steps(crashed) == list(range(1, 9))  # nothing of the earlier run's log


def test_a_kill_during_the_final_save_is_finished_by_a_rerun(world, tmp_path):
    """Before: killed during the final save, the folder held an adapter but no summary or card, and
    the next run refused it as finished ("already holds an adapter"). Now the summary, written last,
    is the mark of a finished run; a folder without it is trained again."""
    out = tmp_path / "out"
    train(_cfg(world, out, method="sft"))
    first = _lora_state(out)
    (out / "train_summary.json").unlink()
    (out / "README.md").unlink()
    res = train(_cfg(world, out, method="sft"))
    assert res.steps == 4 and (out / "train_summary.json").is_file()
    for k, v in _lora_state(out).items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=0)  # the same seed, a fresh run
    with pytest.raises(AsftError, match="already holds a finished run"):
        train(_cfg(world, out, method="sft"))


def test_one_writer_per_output_folder_and_a_dead_writers_lock_is_taken_over(world, tmp_path):
    """Before: two `asft train` into one --out both exited 0 and left a mix of both runs' files."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom asft.fileio import output_lock\n"
        f"with output_lock({str(out)!r}, 'asft train'):\n    print('held', flush=True)\n    time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AsftError, match=rf"out: being written by pid {holder.pid} on .* \(asft train\); wait"):
            train(_cfg(world, out, method="sft"))
        assert not out.exists()  # refused before anything was written
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # a dead writer: the kernel drops its lock
        holder.wait()
    time.sleep(0.1)
    out.mkdir()  # and the temporary files a killed writer left behind are removed
    (out / ".config.yaml.abc123.tmp").write_text("half")
    (out / ".adapter.tmp").mkdir()
    train(_cfg(world, out, method="sft"))
    assert (out / "train_summary.json").is_file()
    assert not list(out.glob(".*.tmp")) and not list(tmp_path.glob(".out.lock"))


def test_report_to_tensorboard_writes_task_loss_and_penalty_as_scalars(world, tmp_path):
    """Before: the CLI hard-coded report_to=[]; now --report-to tensorboard writes OUT/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    train(_cfg(world, out, method="l2", lam=2.0, report_to=["tensorboard"]))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "task_loss" in r]
    for tag, key in (("train/task_loss", "task_loss"), ("train/penalty", "penalty")):
        points = events.Scalars(tag)
        assert [p.step for p in points] == [r["step"] for r in logged]
        assert [p.value for p in points] == pytest.approx([r[key] for r in logged], rel=1e-6)
    assert logged[-1]["penalty"] > 0
    with pytest.raises(AsftError, match="report_to: unknown dashboard 'tensorbord'"):
        train(_cfg(world, tmp_path / "x", method="sft", report_to=["tensorbord"]))


def test_a_method_that_cannot_resume_starts_a_killed_run_afresh(world, tmp_path, caplog):
    """Lisa refuses --resume (its alternating state is not checkpointed): a rerun of its killed run
    must not continue it silently either."""
    safety = tmp_path / "safety.json"
    safety.write_text(json.dumps([{"instruction": "say bad", "output": "no"}] * 4))
    kw = dict(method="lisa", epochs=2, save_steps=2, safety_data=str(safety), lisa_align_steps=1,
              lisa_finetune_steps=1)
    full = tmp_path / "full"
    train(_cfg(world, full, **kw))
    crashed = crashed_copy(full, tmp_path / "crashed")
    with caplog.at_level("WARNING", logger="asft"):
        res = train(_cfg(world, crashed, **kw))
    assert res.resumed_from is None and "starting afresh: lisa cannot --resume" in caplog.text


def test_hugging_face_names_and_key_value_overrides(world, tmp_path):
    """A config copied from TrainingArguments / PEFT works unrenamed; KEY=VALUE sets options on the
    command line; one option under two names is refused, not resolved by order."""
    import yaml

    from asft.cli import main

    path = tmp_path / "hf.yaml"
    path.write_text(yaml.safe_dump({
        "model_name_or_path": str(world["aligned"]), "train_file": str(world["data"]),
        "learning_rate": "2e-3", "num_train_epochs": 1, "per_device_train_batch_size": 4,
        "target_modules": ["q_proj"], "r": 4, "method": "sft", "template": "chat", "progress": False}))
    cfg = TrainConfig.from_yaml(path)
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.targets, cfg.lora_r) == (2e-3, 1, 4, ["q_proj"], 4)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "method=l2", "lam=10", f"output_dir={out}",
                 "--max-steps", "2", "--quiet"]) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["method"], saved["lam"], saved["lr"], saved["max_steps"], saved["lora_r"]) == ("l2", 10, 2e-3, 2, 4)
    assert len((out / "train_log.jsonl").read_text().splitlines()) >= 2
    with pytest.raises(AsftError, match="'lr' is given twice"):
        TrainConfig.from_yaml(_write(tmp_path / "two.yaml", "lr: 1e-3\nlearning_rate: 2e-3\n"))
    with pytest.raises(AsftError, match=r"unknown option 'learnig_rate' \(did you mean 'learning_rate'\?\)"):
        TrainConfig.from_yaml(_write(tmp_path / "typo.yaml", "learnig_rate: 1e-3\n"))


def _write(path, text):
    path.write_text(text)
    return path
