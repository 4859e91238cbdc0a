"""``asft export-gguf``: a model folder (and optionally its LoRA adapter, merged in) written back out as
one GGUF file for llama.cpp / ollama, the way llama.cpp's ``convert_hf_to_gguf.py`` writes it.

Architectures: the two that ``asft import-gguf`` is used with here, ``llama`` (SmolLM2, Llama 2/3,
Mistral-shaped) and ``gemma3`` (Gemma 3 text). What the converter does that a plain rename would not:

- tensor names through the ``gguf`` package's own map (``model.layers.0.self_attn.q_proj`` ->
  ``blk.0.attn_q``); a tied ``lm_head`` is left out (llama.cpp ties it back);
- llama: q/k rows permuted into llama.cpp's rotary layout (transformers reverses this on load);
- gemma3: norm weights stored as ``1 + w`` (Gemma's RMSNorm multiplies by ``1 + w``; llama.cpp by ``w``);
- 1-D tensors (norms) stay F32; matrices in ``--dtype`` (f32, f16 or q8_0; q8_0 needs rows of a
  multiple of 32, others stay f16);
- the tokenizer: copied field by field from the GGUF the folder was imported from (``asft_import.json``,
  followed through ``asft align``'s ``align.json``) when its tokenizer is unchanged; otherwise written
  from ``tokenizer.json`` for byte-level BPE tokenizers (the ``gpt2`` kind). The chat template is the
  folder's own.

``export_gguf`` returns a record (also printed by the CLI): file, size, dtype, tensors, where the
tokenizer came from. The file is written to a temporary name and renamed: complete or absent.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from asft.errors import AsftError
from asft.fileio import content_hash, read_json

DTYPES = ("f32", "f16", "q8_0")
ARCHS = {"llama": "llama", "mistral": "llama", "gemma3_text": "gemma3", "gemma3": "gemma3"}  # model_type -> GGUF
NORM_SHIFT = {"gemma3": 1.0}  # Gemma's RMSNorm scales by (1 + w): llama.cpp stores 1 + w


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (``convert_hf_to_gguf.LlamaModel.permute``)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_source(folder: Path, depth: int = 0) -> list[Path] | None:
    """The GGUF file(s) ``folder`` was made from with an unchanged tokenizer, else None: its own
    ``asft_import.json``, or (a model made by ``asft align``) that of the model it was aligned from."""
    folder = Path(folder)
    if (folder / "asft_import.json").is_file():
        files = [Path(s["file"]) for s in read_json(folder / "asft_import.json").get("sources", [])]
        return files if files and all(f.is_file() for f in files) else None
    if depth < 4 and (folder / "align.json").is_file():
        parent = Path(str(read_json(folder / "align.json").get("config", {}).get("model", "")))
        if not parent.is_absolute() and not parent.is_dir():  # relative to where align ran: try a sibling
            parent = folder.parent / parent.name
        same = all((folder / n).is_file() == (parent / n).is_file()
                   and (not (folder / n).is_file() or content_hash(folder / n) == content_hash(parent / n))
                   for n in ("tokenizer.json", "tokenizer_config.json"))
        return gguf_source(parent, depth + 1) if parent.is_dir() and same else None
    return None


def _copy_tokenizer(writer, sources: list[Path]) -> None:
    """Every ``tokenizer.*`` field of the source GGUF, as it was (the chat template is set after)."""
    import gguf

    from asft.models.gguf import _joined

    with tempfile.TemporaryDirectory() as tmp:
        reader = gguf.GGUFReader(str(_joined(sources, Path(tmp))))
        for key, field in reader.fields.items():
            if not key.startswith("tokenizer.") or key == "tokenizer.chat_template":
                continue
            main = field.types[0]
            sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
            value = field.contents()
            writer.add_key_value(key, list(value) if sub is not None else value, main, sub)


def _check_tokenizer(folder: Path) -> dict:
    """``folder``'s tokenizer.json when it is a byte-level BPE one (what ``_write_tokenizer`` writes)."""
    import json

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise AsftError(f"{folder}: no tokenizer.json to export (and not imported from a GGUF whose tokenizer "
                        "could be copied)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    pre = json.dumps(spec.get("pre_tokenizer") or {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or "ByteLevel" not in pre:
        raise AsftError(f"{path}: export writes byte-level BPE tokenizers (gpt2 kind); this one is "
                        f"{model.get('type')}{' with byte fallback' if model.get('byte_fallback') else ''} "
                        "(a model imported with asft import-gguf keeps its GGUF tokenizer instead)")
    return spec


def _write_tokenizer(writer, tokenizer, folder: Path) -> None:
    """A byte-level BPE tokenizer (``tokenizer.json``) as llama.cpp's ``gpt2`` vocabulary."""
    import gguf

    spec = _check_tokenizer(folder)
    model = spec["model"]
    vocab = {**model["vocab"], **{t["content"]: t["id"] for t in spec.get("added_tokens", [])}}
    size = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, i in vocab.items():
        tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for t in spec.get("added_tokens", []):
        types[t["id"]] = gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                      ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None:
            add(int(token_id))
    ids = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(ids) and ids[0] == tokenizer.bos_token_id)


def _metadata(writer, config, arch: str, dtype: str) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    rope = getattr(config, "rope_parameters", None) or {}
    if arch == "gemma3":
        # GGUF has no key for which layers attend locally: llama.cpp (and transformers' reader) assume
        # Gemma 3's pattern, every 6th layer global; another pattern would load as a different model
        pattern = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                   for i in range(config.num_hidden_layers)]
        if list(getattr(config, "layer_types", None) or pattern) != pattern:
            raise AsftError(f"{config.name_or_path}: layer_types {config.layer_types} are not Gemma 3's pattern "
                            "(every 6th layer global), which is all a GGUF file can say")
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_sliding_window(config.sliding_window)
        theta = (rope.get("full_attention") or {}).get("rope_theta", getattr(config, "rope_theta", 1e6))
    else:
        writer.add_rope_dimension_count(head_dim)
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[dtype])


def _tensor(data: np.ndarray, dtype: str):
    """(array, its GGML type): 1-D tensors F32; matrices in ``dtype`` (q8_0 needs rows of 32k)."""
    import gguf

    if data.ndim < 2 or dtype == "f32":
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if dtype == "q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.GGMLQuantizationType.Q8_0
        return gguf.quants.quantize(data.astype(np.float32), q), q
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def export_gguf(model_dir: str | Path, out: str | Path, adapter: str | Path | None = None,
                dtype: str = "f16") -> dict:
    """Write ``model_dir`` (with ``adapter`` merged in) to the GGUF file ``out``; returns the record."""
    try:
        import gguf
    except ImportError:
        raise AsftError("writing GGUF files needs the gguf package: pip install gguf") from None
    import torch

    from asft.fileio import check_output, output_lock
    from asft.models.modeling import load_adapter, load_model, load_tokenizer

    if dtype not in DTYPES:
        raise AsftError(f"--dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    model_dir, out = Path(model_dir), Path(out)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise AsftError(f"{model_dir}: not a model folder (no config.json)")
    model_type = str(read_json(config_file).get("model_type"))
    arch = ARCHS.get(model_type)
    if arch is None:
        raise AsftError(f"{config_file}: model_type {model_type!r} cannot be exported yet "
                        f"(supported: {', '.join(sorted(set(ARCHS)))})")
    check_output(out, folder=False)
    sources = gguf_source(model_dir)
    if not sources:  # the tokenizer refused now, not after the model is loaded
        _check_tokenizer(model_dir)
    with output_lock(out, "asft export-gguf", folder=False):
        tokenizer = load_tokenizer(model_dir)
        model = load_model(model_dir, dtype="float32", device="cpu")
        if adapter is not None:
            model = load_adapter(model, adapter, merge=True)
        config = model.config
        names = gguf.get_tensor_name_map(next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch),
                                         config.num_hidden_layers)
        tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
        writer = gguf.GGUFWriter(str(tmp), arch)
        try:
            writer.add_name(model_dir.name)
            _metadata(writer, config, arch, dtype)
            if sources:
                _copy_tokenizer(writer, sources)
            else:
                _write_tokenizer(writer, tokenizer, model_dir)
            if tokenizer.chat_template:
                writer.add_chat_template(tokenizer.chat_template)
            tied = bool(getattr(config, "tie_word_embeddings", False))
            shift = NORM_SHIFT.get(arch, 0.0)
            n = 0
            with torch.no_grad():
                for name, tensor in model.state_dict().items():
                    if tied and name == "lm_head.weight":
                        continue
                    base, _, suffix = name.rpartition(".")
                    target = names.get_name(base)
                    if target is None:
                        raise AsftError(f"{model_dir}: tensor {name} has no GGUF name for {arch}")
                    data = tensor.float().numpy()
                    if arch == "llama" and target.endswith(("attn_q", "attn_k")):
                        data = _permute(data, config.num_attention_heads if target.endswith("attn_q")
                                        else config.num_key_value_heads)
                    if shift and target.endswith("norm"):
                        data = data + shift
                    array, kind = _tensor(data, dtype)
                    writer.add_tensor(f"{target}.{suffix}", array, raw_dtype=kind)
                    n += 1
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return {"file": str(out), "bytes": out.stat().st_size, "dtype": dtype, "architecture": arch, "tensors": n,
            "adapter": str(adapter) if adapter else None,
            "tokenizer": f"copied from {sources[0]}" if sources else "written from tokenizer.json"}
