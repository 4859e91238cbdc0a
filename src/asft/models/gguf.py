"""GGUF checkpoints to plain Hugging Face folders (safetensors), for models that ship only as GGUF.

``import_gguf([file], out)`` reads a GGUF file (or the parts of a chunked one, joined in order)
with transformers' own GGUF reader, which dequantises every tensor (Q4_K, Q4_1, ... -> float), and
writes a normal model folder: ``config.json`` (no quantization config), ``model.safetensors``,
tokenizer files with the chat template where the GGUF has one, ``generation_config.json`` and
``asft_import.json`` (sources, their sha256, the logits check). Before the folder is moved into
place it is reloaded from disk and its logits on a probe text are compared with the GGUF model's:
any difference beyond ``atol`` refuses the import.

Any architecture transformers can read from GGUF works (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3,
...); others are refused in one line naming the file and the architecture.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from asft.errors import AsftError
from asft.fileio import content_hash, write_json

PROBE = "The quick brown fox jumps over the lazy dog. 1 2 3"


def _require_gguf() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise AsftError("reading GGUF files needs the gguf package: pip install gguf") from None


def _joined(parts: Sequence[Path], tmp: Path) -> Path:
    """One GGUF file: the single input, or the parts concatenated in the order given."""
    for p in parts:
        if not p.is_file():
            raise AsftError(f"{p}: file not found")
    if len(parts) == 1:
        return parts[0]
    out = tmp / parts[0].name.split(".part")[0]
    with open(out, "wb") as f:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 24)
    return out


def _load(gguf_path: Path, dtype):
    """(model, tokenizer) from a GGUF file, dequantised to ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from asft.models.modeling import dtype_kwarg

    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise AsftError(f"{gguf_path}: not a GGUF file (no GGUF magic at its start)")
    try:  # the whole header and tensor table first: a truncated file is one line, not a struct.error
        from gguf import GGUFReader

        GGUFReader(str(gguf_path))
    except Exception as e:  # the reader's errors: struct, value, index, memory-map errors
        raise AsftError(f"{gguf_path}: truncated or corrupt GGUF file ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'})") from None
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                  trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                     trust_remote_code=False, **{dtype_kwarg(): dtype})
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "not supported" in msg:
            import transformers

            raise AsftError(f"{gguf_path}: {msg} (transformers {transformers.__version__} cannot read this "
                            "architecture from GGUF)") from None
        raise AsftError(f"{gguf_path}: cannot read it ({msg})") from None
    return model.eval(), tokenizer


def _plain_copy(model):
    """The same weights in a model built from the config without the GGUF quantization config
    (``save_pretrained`` refuses a model that still carries it)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    from asft.models.modeling import dtype_kwarg

    plain = AutoModelForCausalLM.from_config(config, **{dtype_kwarg(): next(model.parameters()).dtype})
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    tied = {k for k in missing if "lm_head" in k and getattr(config, "tie_word_embeddings", False)}
    if set(missing) - tied or unexpected:
        raise AsftError(f"GGUF import: weights do not match the architecture (missing {sorted(missing)[:3]}, "
                        f"unexpected {sorted(unexpected)[:3]})")
    if tied:
        plain.tie_weights()
    plain.generation_config = model.generation_config
    return plain.eval()


def _logits(model, tokenizer):
    import torch

    ids = tokenizer(PROBE, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return model(input_ids=ids).logits.float()


def import_gguf(files: Sequence[str | os.PathLike], out: str | os.PathLike, dtype: str = "float32",
                atol: float = 1e-4, overwrite: bool = False) -> dict:
    """Write the model of ``files`` (one GGUF file, or the ordered parts of one) to the folder ``out``.

    Returns the import record (also ``out/asft_import.json``): sources with sha256, architecture,
    parameters, dtype, has_chat_template, max_abs_logit_diff (GGUF model vs reloaded folder).
    """
    from asft.models.modeling import DTYPES, load_model, load_tokenizer

    _require_gguf()
    if dtype not in ("float32", "bfloat16", "float16"):
        raise AsftError(f"--dtype must be float32, bfloat16 or float16, got {dtype!r}")
    parts = [Path(f) for f in files]
    if not parts:
        raise AsftError("import-gguf needs at least one GGUF file")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AsftError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.importing-{os.getpid()}-{time.time_ns()}"
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        joined = _joined(parts, tmp)
        model, tokenizer = _load(joined, DTYPES[dtype])
        ref = _logits(model, tokenizer)
        plain = _plain_copy(model)
        folder = tmp / "model"
        plain.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        del model, plain
        # the folder as every other command will read it
        again = load_model(folder, dtype=dtype, device="cpu").eval()
        diff = float((_logits(again, load_tokenizer(folder)) - ref).abs().max())
        if not diff <= atol:
            raise AsftError(f"{parts[0]}: the written folder's logits differ from the GGUF model's by "
                            f"{diff:.3g} (> {atol}); not imported")
        record = {
            "sources": [{"file": str(p), "sha256": content_hash(p, n=64)} for p in parts],
            "architecture": again.config.architectures[0] if again.config.architectures else again.config.model_type,
            "model_type": again.config.model_type,
            "parameters": sum(p.numel() for p in again.parameters()),
            "dtype": dtype,
            "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "max_abs_logit_diff": diff,
            "probe": PROBE,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json(folder / "asft_import.json", record)
        del again
        if out.exists():
            shutil.rmtree(out)
        os.rename(folder, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record
