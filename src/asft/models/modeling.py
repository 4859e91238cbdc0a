"""Loading causal LMs, tokenizers and LoRA adapters from local folders (safetensors only).

Never downloads (``local_files_only``), never runs remote code, never unpickles.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from asft.errors import AsftError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device | None = None) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA device that supports it, float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        dev = torch.device(device) if device is not None else default_device()
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise AsftError(f"unknown dtype {dtype!r} (auto, {', '.join(DTYPES)})")
    return DTYPES[dtype]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_model_folder(path: str | Path) -> None:
    """Refuse (one line, naming the folder) anything but a model folder with config.json and
    safetensors weights, single or sharded; reads only the file headers (``asft.models.checkpoints``)."""
    from asft.models.checkpoints import ModelFolder

    ModelFolder(path)


def dtype_kwarg() -> str:
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise AsftError(f"{path}: tokenizer folder not found")
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise AsftError(f"{path}: cannot load a tokenizer ({str(e).splitlines()[0]})") from None
    if tok.pad_token_id is None:  # Llama-style tokenizers ship without a pad token
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str | Path, dtype: str | torch.dtype = "auto",
               device: str | torch.device | None = None) -> torch.nn.Module:
    """An ``AutoModelForCausalLM`` from a local folder, on ``device`` (default: CUDA if present)."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    check_model_folder(path)
    device = torch.device(device) if device is not None else default_device()
    kwargs = {dtype_kwarg(): resolve_dtype(dtype, device)}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, trust_remote_code=False, use_safetensors=True, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise AsftError(f"{path}: cannot load the model ({str(e).splitlines()[0]})") from None
    return model.to(device)


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the FutureWarning transformers 5 raises when PEFT reads the deprecated
    ``is_gradient_checkpointing`` while wrapping a model: it is PEFT's call, not the user's, and
    printed on every run it only hides the messages that matter."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_adapter(model: torch.nn.Module, adapter: str | Path, merge: bool = False,
                 trainable: bool = False) -> torch.nn.Module:
    """Apply a saved PEFT LoRA adapter; ``merge`` folds it into the weights (faster inference)."""
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise AsftError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise AsftError(f"{adapter}: no adapter_model.safetensors (only safetensors adapters are supported)")
    try:
        with quiet_peft():
            peft_model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    except RuntimeError as e:  # PEFT's "size mismatch for ...": an adapter of another model
        if "size mismatch" not in str(e):
            raise
        line = next((x.strip() for x in str(e).splitlines() if "size mismatch" in x), str(e))
        raise AsftError(f"{adapter}: this adapter was trained on another model than "
                        f"{getattr(model, 'name_or_path', 'this one')} ({line[:200]})") from None
    return peft_model.merge_and_unload() if merge else peft_model


def save_adapter(model: torch.nn.Module, out: Path, state_dict: dict | None = None) -> None:
    """Save a PEFT model's adapter into ``out``: save_pretrained into a temporary folder, then
    move the files into place (no half-written adapter). ``state_dict``: the adapter's tensors when the
    model's own are shards (``asft train --fsdp``)."""
    import shutil

    tmp = out / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
    for f in tmp.iterdir():
        f.replace(out / f.name)
    tmp.rmdir()


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The causal LM inside DDP and PEFT wrappers (its LoRA layers are in it: running it runs them)."""
    while hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM under ``model`` (PEFT / DDP wrappers removed) slices its hidden states by
    a boolean (batch, length) ``logits_to_keep`` before the output layer (transformers >= 5)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401  the 2-D boolean form
    except ImportError:
        return False
    import inspect

    return "logits_to_keep" in inspect.signature(causal_lm(model).forward).parameters
