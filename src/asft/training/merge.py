"""``asft merge``: a LoRA adapter folded into its model, saved as a plain model folder."""

from __future__ import annotations

import shutil
from pathlib import Path

from asft.errors import AsftError


def merge(model_dir: str | Path, adapter_dir: str | Path, out: str | Path, dtype: str = "auto",
          overwrite: bool = False) -> Path:
    """Fold a LoRA adapter into its model and save a plain model folder (safetensors) + tokenizer.

    ``dtype="auto"`` keeps the checkpoint's own dtype (a bf16 model stays bf16)."""
    from asft.fileio import output_lock

    with output_lock(out, "asft merge"):  # which also refuses an --out that is a file or under one
        return _merge(model_dir, adapter_dir, out, dtype, overwrite)


def _merge(model_dir, adapter_dir, out, dtype, overwrite) -> Path:
    from asft.fileio import read_json
    from asft.models.modeling import DTYPES, load_adapter, load_model, load_tokenizer

    out, model_dir, adapter_dir = Path(out).resolve(), Path(model_dir).resolve(), Path(adapter_dir).resolve()
    for keep in (model_dir, adapter_dir, Path.cwd().resolve()):
        if out == keep or out in keep.parents:
            raise AsftError(f"{out}: refusing to write the merged model over {keep}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AsftError(f"{out}: output folder exists and is not empty (pass --overwrite)")
    if dtype == "auto" and (model_dir / "config.json").is_file():
        config = read_json(model_dir / "config.json")
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        dtype = dtype if dtype in DTYPES else "float32"
    tokenizer = load_tokenizer(model_dir)
    model = load_adapter(load_model(model_dir, dtype=dtype, device="cpu"), adapter_dir, merge=True)
    tmp, old = out.parent / f".{out.name}.merging.tmp", out.parent / f".{out.name}.old.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    from asft.fileio import write_text
    from asft.training.card import card_text

    write_text(tmp / "README.md", card_text(adapter_dir, merged=out))  # the adapter's card, for the merged model
    if out.exists():  # swap, then delete: the old folder is never lost before the new one is in place
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out
