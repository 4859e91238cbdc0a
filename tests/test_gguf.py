"""`asft import-gguf`: a GGUF file (written here with the gguf package) to a safetensors folder."""

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from _gguf import CHATML, tiny_llama, write_gguf  # noqa: E402
from asft.errors import AsftError  # noqa: E402
from asft.models.gguf import import_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = tiny_llama(seed=0)
    return model, write_gguf(model, root / "tiny-llama.F32.gguf")


def test_import_gives_the_original_weights_tokenizer_and_template(tiny, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, path = tiny
    rec = import_gguf([path], tmp_path / "out")
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            "asft_import.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    # every tensor is the original one: the q/k permutation of llama.cpp undone exactly
    saved = load_file(str(out / "model.safetensors"))
    for name, t in model.state_dict().items():
        assert torch.equal(saved[name], t), name
    # the folder loads like any other and computes what the original model computes
    again = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[257, 104, 105, 32, 256, 116, 104, 101, 114, 101]])
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>"
    assert tok.decode(tok("hello there, abba")["input_ids"], skip_special_tokens=True) == "hello there, abba"
    assert tok.convert_tokens_to_ids("ab") in tok("abba")["input_ids"]  # the file's merge is used
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert rec["has_chat_template"] and rec["max_abs_logit_diff"] <= 1e-4 and rec["model_type"] == "llama"
    assert rec["parameters"] == sum(p.numel() for p in model.parameters())
    assert rec["sources"][0]["file"] == str(path) and len(rec["sources"][0]["sha256"]) == 64
    assert json.loads((out / "asft_import.json").read_text()) == rec


def test_chunked_file_joined_in_order_and_bf16(tiny, tmp_path):
    from safetensors.torch import load_file

    _, path = tiny
    data = path.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        part = tmp_path / f"tiny.gguf.part{i:02d}"
        part.write_bytes(data[cut[i]:cut[i + 1]])
        parts.append(part)
    import_gguf([path], tmp_path / "whole")
    import_gguf(parts, tmp_path / "joined")
    assert (tmp_path / "joined" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()
    with pytest.raises(AsftError, match="not a GGUF file"):  # parts out of order
        import_gguf([parts[1], parts[0], parts[2]], tmp_path / "shuffled")
    rec = import_gguf([path], tmp_path / "bf16", dtype="bfloat16")
    assert rec["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "bf16" / "model.safetensors")).values())


def test_bad_inputs_are_one_line(tiny, tmp_path):
    model, path = tiny
    with pytest.raises(AsftError, match="nope.gguf: file not found"):
        import_gguf([tmp_path / "nope.gguf"], tmp_path / "x")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(AsftError, match="junk.gguf: not a GGUF file"):
        import_gguf([junk], tmp_path / "x")
    weird = write_gguf(model, tmp_path / "weird.gguf", arch="weirdnet")
    with pytest.raises(AsftError, match="weird.gguf: .*weirdnet.*cannot read this architecture"):
        import_gguf([weird], tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(AsftError, match="exists and is not empty"):
        import_gguf([path], tmp_path / "full")
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    assert not (tmp_path / "x").exists()


def test_cli(tiny, tmp_path, capsys):
    from asft.cli import main

    _, path = tiny
    assert main(["import-gguf", str(path), "--out", str(tmp_path / "cli")]) == 0
    assert "written to" in capsys.readouterr().out
    assert main(["import-gguf", str(path), "--out", str(tmp_path / "cli")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


MODELS = Path(os.environ.get("ASFT_MODELS", Path.home() / ".cache" / "asft" / "models"))


@pytest.mark.slow
@pytest.mark.skipif(not list((MODELS / ".wheels" / "smollm2").glob("*.gguf")),
                    reason="SmolLM2 GGUF not downloaded (scripts/get-real-models.sh)")
def test_real_smollm2_gguf_imports(tmp_path):
    src = next((MODELS / ".wheels" / "smollm2").glob("*.gguf"))
    rec = import_gguf([src], tmp_path / "smollm2")
    assert rec["model_type"] == "llama" and rec["has_chat_template"] and 130e6 < rec["parameters"] < 140e6
