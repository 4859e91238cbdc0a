"""`asft export-gguf`: a folder (+ adapter) written as GGUF and read back by transformers' GGUF reader
(what `asft import-gguf` uses) gives the same tensors, logits, tokenizer and chat template."""

import json
import shutil

import pytest
import torch

pytest.importorskip("gguf")

from _gguf import CHATML, tiny_llama, write_gguf  # noqa: E402
from asft.errors import AsftError  # noqa: E402
from asft.models.gguf import import_gguf  # noqa: E402
from asft.models.gguf_export import export_gguf  # noqa: E402

IDS = torch.tensor([[257, 104, 105, 32, 256, 116, 104, 101, 114, 101]])


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A tiny Llama GGUF imported into a folder (the folder knows its source GGUF)."""
    root = tmp_path_factory.mktemp("export")
    import_gguf([write_gguf(tiny_llama(seed=0), root / "tiny.F32.gguf")], root / "model")
    return root / "model"


def _logits(folder, ids=IDS):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits


def _tensors(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_round_trip_f32_is_exact_and_keeps_tokenizer_and_template(imported, tmp_path):
    from transformers import AutoTokenizer

    rec = export_gguf(imported, tmp_path / "m.gguf", dtype="f32")
    assert rec["tokenizer"].startswith("copied from") and rec["architecture"] == "llama"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]  # no temporary file left
    import_gguf([tmp_path / "m.gguf"], tmp_path / "back")
    a, b = _tensors(imported), _tensors(tmp_path / "back")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # q/k permutation undone exactly
    t0, t1 = AutoTokenizer.from_pretrained(imported), AutoTokenizer.from_pretrained(tmp_path / "back")
    text = "hello there, abba <|im_end|>"
    assert t1(text)["input_ids"] == t0(text)["input_ids"] and t1.chat_template == CHATML
    assert (t1.bos_token, t1.eos_token) == (t0.bos_token, t0.eos_token)


@pytest.mark.parametrize("dtype, atol", [("f16", 2e-3), ("q8_0", 2e-2)])
def test_f16_and_q8_0_within_their_tolerance(imported, tmp_path, dtype, atol):
    export_gguf(imported, tmp_path / "m.gguf", dtype=dtype)
    import_gguf([tmp_path / "m.gguf"], tmp_path / "back")
    ref, got = _logits(imported), _logits(tmp_path / "back")
    diff = (ref - got).abs().max().item()
    assert 0 < diff <= atol  # rounded (not bit-equal), within the dtype's tolerance
    size = (tmp_path / "m.gguf").stat().st_size
    assert size < sum(t.numel() for t in _tensors(imported).values()) * 4  # smaller than f32


def test_adapter_merged_and_tokenizer_written_from_tokenizer_json(imported, tmp_path):
    """A folder that was not imported from a GGUF (its tokenizer written from tokenizer.json), with a
    LoRA adapter merged in: the GGUF computes what the PEFT model computes."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(imported, plain)
    (plain / "asft_import.json").unlink()
    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(plain), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    peft.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        want = peft.eval()(IDS).logits
    rec = export_gguf(plain, tmp_path / "m.gguf", adapter=tmp_path / "adapter", dtype="f32")
    assert rec["tokenizer"] == "written from tokenizer.json"
    import_gguf([tmp_path / "m.gguf"], tmp_path / "back")
    torch.testing.assert_close(_logits(tmp_path / "back"), want, rtol=0, atol=1e-4)
    assert (_logits(tmp_path / "back") - _logits(plain)).abs().max() > 1e-2  # the adapter is in it
    t0, t1 = AutoTokenizer.from_pretrained(plain), AutoTokenizer.from_pretrained(tmp_path / "back")
    for text in ("hello there, abba", "<|im_start|>user\nhi<|im_end|>"):
        assert t1(text)["input_ids"] == t0(text)["input_ids"]
    assert t1.chat_template == CHATML


def test_gemma3_norms_and_tied_embeddings(imported, tmp_path):
    """Gemma 3: norms stored as 1 + w, no separate output tensor (tied); read back exactly."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    kw = dict(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
              num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=128,
              sliding_window=4, tie_word_embeddings=True, bos_token_id=257, eos_token_id=259, pad_token_id=257)
    odd = Gemma3ForCausalLM(Gemma3TextConfig(**kw, layer_types=["full_attention"] * 6))
    odd.save_pretrained(tmp_path / "odd")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(imported / f, tmp_path / "odd" / f)
    with pytest.raises(AsftError, match="not Gemma 3's pattern"):  # a GGUF could not say it
        export_gguf(tmp_path / "odd", tmp_path / "g.gguf")
    model = Gemma3ForCausalLM(Gemma3TextConfig(**kw)).eval()  # layer 6 global, the others local
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(-0.5, 0.5)
    folder = tmp_path / "gemma"
    model.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(imported / f, folder / f)
    rec = export_gguf(folder, tmp_path / "g.gguf", dtype="f32")
    assert rec["architecture"] == "gemma3"
    import gguf

    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "g.gguf")).tensors}
    assert "output.weight" not in names and "blk.0.post_ffw_norm.weight" in names
    # the weights through transformers' GGUF reader (its Gemma tokenizer converter wants a sentencepiece
    # vocabulary, which a real Gemma's export copies from its source GGUF: tested on the real model)
    from transformers import AutoModelForCausalLM

    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="g.gguf").eval()
    assert (back.config.sliding_window, back.config.head_dim, back.config.num_key_value_heads) == (4, 16, 1)
    a, b = model.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)  # norms: (1 + w) - 1
    with torch.no_grad():
        torch.testing.assert_close(back(IDS).logits, model(IDS).logits, rtol=0, atol=1e-4)


def test_bad_inputs_are_one_line(imported, tmp_path):
    plain = tmp_path / "other"
    shutil.copytree(imported, plain)
    (plain / "asft_import.json").unlink()
    config = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(AsftError, match="model_type 'gpt2' cannot be exported yet"):
        export_gguf(plain, tmp_path / "x.gguf")
    (plain / "config.json").write_text(json.dumps(config))
    spec = json.loads((plain / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (plain / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(AsftError, match="tokenizer.json: export writes byte-level BPE tokenizers"):
        export_gguf(plain, tmp_path / "x.gguf")
    with pytest.raises(AsftError, match="not a model folder"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*.tmp"))


REAL = {"smollm2": "smollm2-135m-instruct", "gemma3": "gemma3-270m"}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_models_round_trip(tmp_path, name):
    """The real models (scripts/get-real-models.sh): q8_0 export, import, logits, tokenizer, template."""
    from pathlib import Path

    from transformers import AutoTokenizer

    folder = Path.home() / ".cache" / "asft" / "models" / REAL[name]
    if not (folder / "asft_import.json").is_file():
        pytest.skip(f"{folder}: not there (bash scripts/get-real-models.sh)")
    rec = export_gguf(folder, tmp_path / "m.gguf", dtype="q8_0")
    assert rec["tokenizer"].startswith("copied from")
    import_gguf([tmp_path / "m.gguf"], tmp_path / "back")
    t0, t1 = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(tmp_path / "back")
    text = "The quick brown fox jumps over the lazy dog. 1 2 3"
    ids = t0(text, return_tensors="pt").input_ids
    assert t1(text)["input_ids"] == ids[0].tolist() and t1.chat_template == t0.chat_template
    ref, got = _logits(folder, ids), _logits(tmp_path / "back", ids)
    # q8_0 of weights that were Q4_1 / Q4_K before import: measured on SmolLM2 15 of 16 next tokens the
    # same, max |logit diff| 1.31
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean() >= 0.9
    assert (ref - got).abs().max() < 2.0
