"""Read Hugging Face model folders tensor by tensor, without ever loading a whole model.

Only safetensors are read (pickled ``.bin`` weights can run code on load and are refused). Shard
headers are parsed once (a few KB each); tensors are then streamed one at a time with
``safetensors.safe_open``, so the memory a caller needs is about the size of the tensors it holds.

Also here: ``fingerprint`` (a cheap identity of a checkpoint), ``check_pair`` (two folders share an
architecture) and ``SafetensorsWriter`` (write a safetensors file one tensor at a time).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import torch

from asft.errors import AsftError
from asft.fileio import read_json

INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype codes <-> torch dtypes (getattr: float8 types only exist in newer torch).
_DTYPES = {
    code: getattr(torch, name)
    for code, name in [
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"),
        ("I64", "int64"), ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"),
        ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("BOOL", "bool"),
        ("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2"),
    ]
    if hasattr(torch, name)
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}

# Config keys that define the architecture (the rest: dropout, rope scaling, token ids... do not
# change which tensors exist or what they mean for an anchor).
ARCH_KEYS = (
    "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "vocab_size", "tie_word_embeddings",
)

# The fingerprint hashes this many elements from the start and from the end of every tensor.
_FINGERPRINT_ELEMENTS = 2048


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: its shard, dtype code, shape and byte range in the shard's data."""

    shard: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header dict, byte offset where tensor data starts) of one safetensors file, parsed by hand
    so that only the header is read."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("file shorter than a header")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise ValueError("header size is implausible")
            text = f.read(n)
            if len(text) < n:
                raise ValueError("truncated header")
        header = json.loads(text)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise AsftError(f"{path}: not a valid safetensors file ({e})") from None
    return header, 8 + n


class ModelFolder:
    """A Hugging Face model folder with ``config.json`` and safetensors weights (single or sharded).

    >>> m = ModelFolder("llama-2-7b-chat")
    >>> m.shape("model.layers.0.self_attn.q_proj.weight")   # (4096, 4096), read from the header
    >>> w = m.get_tensor("model.layers.0.self_attn.q_proj.weight")   # only this tensor is read
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_file():
            raise AsftError(f"{self.path}: is a file, not a model folder")
        if not self.path.is_dir():
            raise AsftError(f"{self.path}: model folder not found")
        cfg = self.path / "config.json"
        if not cfg.is_file():
            gguf = sorted(self.path.glob("*.gguf"))
            if gguf:
                raise AsftError(f"{self.path}: holds a GGUF file ({gguf[0].name}), not a Hugging Face model "
                                f"folder; convert it with `asft import-gguf {gguf[0]} --out DIR`")
            raise AsftError(f"{self.path}: no config.json (not a Hugging Face model folder)")
        self.config: dict = read_json(cfg)
        if not isinstance(self.config, dict):
            raise AsftError(f"{cfg}: expected a JSON object")
        self._tensors: dict[str, TensorInfo] = {}
        self._data_start: dict[str, int] = {}
        for shard in self._shard_files():
            self._read_shard(shard)

    # -- discovery -------------------------------------------------------------------------------

    def _shard_files(self) -> list[str]:
        index = self.path / INDEX_FILE
        if index.is_file():
            obj = read_json(index)
            weight_map = obj.get("weight_map") if isinstance(obj, dict) else None
            if not isinstance(weight_map, dict) or not weight_map or not all(
                isinstance(v, str) for v in weight_map.values()
            ):
                raise AsftError(f"{index}: malformed index (expected a non-empty \"weight_map\" of tensor name -> shard file)")
            shards = sorted(set(weight_map.values()))
            for s in shards:
                if Path(s).name != s or s in (".", ".."):  # a shard is a file of this folder, nowhere else
                    raise AsftError(f"{index}: names shard {s!r}, which is not a file name inside {self.path}")
                if not (self.path / s).is_file():
                    raise AsftError(f"{index}: names shard {s!r}, which is missing from {self.path}")
            self._index = weight_map
            return shards
        self._index = None
        shards = sorted(p.name for p in self.path.glob("*.safetensors"))
        if shards:
            return shards
        pickles = sorted(
            p.name for p in self.path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")
        )
        if pickles:
            raise AsftError(
                f"{self.path}: only pickle weights ({pickles[0]}); asft reads safetensors only, since "
                "pickles can run code when loaded (convert the folder to safetensors first)"
            )
        raise AsftError(f"{self.path}: no *.safetensors weights")

    def _read_shard(self, shard: str) -> None:
        header, start = read_safetensors_header(self.path / shard)
        self._data_start[shard] = start
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if self._index is not None and self._index.get(name) != shard:
                continue  # the index is authoritative (a shard may repeat a tensor; ignore it here)
            if name in self._tensors:
                raise AsftError(f"{self.path}: tensor {name!r} is in both {self._tensors[name].shard} and {shard}")
            try:
                b, e = info["data_offsets"]
                self._tensors[name] = TensorInfo(shard, info["dtype"], tuple(info["shape"]), b, e)
            except (KeyError, TypeError, ValueError):
                raise AsftError(f"{self.path / shard}: malformed header entry for {name!r}") from None
        if self._index is not None:
            missing = [n for n, s in self._index.items() if s == shard and n not in self._tensors]
            if missing:
                raise AsftError(f"{self.path / INDEX_FILE}: lists {missing[0]!r} in {shard}, which does not contain it")

    # -- metadata --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r}, {len(self._tensors)} tensors in {len(self._data_start)} shard(s))"

    def tensor_names(self) -> list[str]:
        """All tensor names, sorted."""
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise AsftError(f"{self.path}: no tensor {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> torch.dtype:
        code = self.info(name).dtype
        if code not in _DTYPES:
            raise AsftError(f"{self.path / self.info(name).shard}: unsupported dtype {code} for {name!r}")
        return _DTYPES[code]

    def shards(self) -> dict[str, list[str]]:
        """Shard file name -> names of its tensors in file order, so callers can go shard by shard."""
        out: dict[str, list[str]] = {s: [] for s in sorted(self._data_start)}
        for name, info in sorted(self._tensors.items(), key=lambda kv: (kv[1].shard, kv[1].begin)):
            out[info.shard].append(name)
        return {s: names for s, names in out.items() if names}

    def arch(self) -> dict:
        """The architecture-defining config values (see ``ARCH_KEYS``); nested ``text_config`` too."""
        out = {k: self.config.get(k) for k in ARCH_KEYS}
        text = self.config.get("text_config")
        if isinstance(text, dict):  # multimodal wrappers keep the language model's shape here
            out.update({f"text_config.{k}": text.get(k) for k in ARCH_KEYS})
        return out

    # -- data ------------------------------------------------------------------------------------

    def get_tensor(self, name: str) -> torch.Tensor:
        """One tensor, read from its shard (the shard is mapped only while reading)."""
        from safetensors import safe_open

        shard = self.path / self.info(name).shard
        try:
            with safe_open(shard, framework="pt", device="cpu") as f:
                return f.get_tensor(name)
        except Exception as e:  # safetensors raises its own error types; keep the one-line contract
            raise AsftError(f"{shard}: cannot read {name!r} ({e})") from None

    def iter_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` shard by shard (each shard opened once), in file order."""
        from safetensors import safe_open

        wanted = None if names is None else set(names)
        if wanted is not None:
            for n in wanted:
                self.info(n)  # fail before reading anything
        for shard, shard_names in self.shards().items():
            todo = [n for n in shard_names if wanted is None or n in wanted]
            if not todo:
                continue
            try:
                with safe_open(self.path / shard, framework="pt", device="cpu") as f:
                    for n in todo:
                        yield n, f.get_tensor(n)
            except AsftError:
                raise
            except Exception as e:
                raise AsftError(f"{self.path / shard}: cannot read tensors ({e})") from None

    def sample_bytes(self, name: str, elements: int = _FINGERPRINT_ELEMENTS) -> bytes:
        """Raw bytes of the first and last ``elements`` elements of a tensor (a cheap partial read)."""
        info = self.info(name)
        numel = math.prod(info.shape)
        size = info.end - info.begin
        if numel == 0 or size == 0:
            return b""
        item = size // numel
        n = min(elements, numel) * item
        start = self._data_start[info.shard] + info.begin
        with open(self.path / info.shard, "rb") as f:
            f.seek(start)
            head = f.read(n)
            f.seek(start + size - n)
            tail = f.read(n)
        return head + tail


def _as_folder(folder: ModelFolder | str | os.PathLike) -> ModelFolder:
    return folder if isinstance(folder, ModelFolder) else ModelFolder(folder)


def fingerprint(folder: ModelFolder | str | os.PathLike) -> str:
    """sha256 hex digest identifying a checkpoint's weights, cheaply.

    Hashes the architecture config values, every tensor's name, dtype and shape, and the bytes of
    the first and last 2048 elements of every tensor (a few MB read for a 7B model, not 14 GB).
    Independent of how the weights are split into shards.
    """
    from asft.fileio import content_hash

    folder = _as_folder(folder)
    names = folder.tensor_names()
    layout = [[n, folder.info(n).dtype, list(folder.shape(n))] for n in names]
    head = json.dumps({"arch": folder.arch(), "tensors": layout}, sort_keys=True).encode()
    return content_hash(b"".join([head, *(folder.sample_bytes(n) for n in names)]), n=64)


# The files that make a model or adapter folder what it is. Anything else in the folder (an eval
# output folder placed inside an adapter folder, logs, a README) must not change its identity.
IDENTITY_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
                  "adapter_config.json", "tokenizer*", "special_tokens_map.json", "chat_template*")


def folder_identity(path: str | os.PathLike) -> str:
    """Content identity of a model or adapter folder, for cache keys: the content hash of its own
    top-level files (``IDENTITY_FILES``). A model folder's weights count through ``fingerprint``
    (sampled, a few MB read for 7B); an adapter's, and every small file, through their full bytes.
    Two same-rank adapters trained differently differ; copying or touching a folder changes nothing."""
    from asft.fileio import content_hash

    path = Path(path).resolve()
    files = sorted({p for pat in IDENTITY_FILES for p in path.glob(pat) if p.is_file()}) if path.is_dir() else []
    weights = [f for f in files if f.name.endswith(".safetensors")]
    ident: dict = {"files": {f.name: content_hash(f) for f in files if f not in weights}}
    if (path / "config.json").is_file() and weights:
        ident["weights"] = fingerprint(path)
    else:
        ident["weights"] = {f.name: content_hash(f) for f in weights}
    return content_hash(ident)


def check_pair(base: ModelFolder | str | os.PathLike, aligned: ModelFolder | str | os.PathLike) -> None:
    """Refuse (AsftError naming both folders and the first difference) unless the two checkpoints
    have the same architecture config, the same tensor names and the same tensor shapes."""
    base, aligned = _as_folder(base), _as_folder(aligned)
    prefix = f"{aligned.path} does not match {base.path}"
    a_arch, b_arch = aligned.arch(), base.arch()
    for k in b_arch:
        if a_arch.get(k) != b_arch[k]:
            raise AsftError(f"{prefix}: config {k} is {a_arch.get(k)!r}, base has {b_arch[k]!r}")
    a_names, b_names = set(aligned.tensor_names()), set(base.tensor_names())
    for n in sorted(a_names ^ b_names):
        where = "only in the aligned model" if n in a_names else "only in the base model"
        raise AsftError(f"{prefix}: tensor {n!r} is {where}")
    for n in sorted(b_names):
        if aligned.shape(n) != base.shape(n):
            raise AsftError(f"{prefix}: {n} has shape {aligned.shape(n)}, base has {base.shape(n)}")


class SafetensorsWriter:
    """Write a safetensors file one tensor at a time.

    The safetensors header (names, dtypes, shapes, byte offsets) comes first in the file, so all
    tensors are declared up front; ``write`` then appends their bytes in that order. Peak memory
    is one tensor, unlike ``safetensors.torch.save_file`` which needs them all at once.

    >>> with open(tmp, "wb") as f:
    ...     w = SafetensorsWriter(f, [("a", torch.float32, (2, 3))], {"format": "x"})
    ...     w.write("a", torch.zeros(2, 3)); w.close()
    """

    def __init__(self, f: BinaryIO, specs: list[tuple[str, torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None = None):
        self._f = f
        self._specs = [(n, dt, tuple(int(s) for s in shape)) for n, dt, shape in specs]
        header: dict = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for name, dt, shape in self._specs:
            if name in header or name == "__metadata__":
                raise ValueError(f"duplicate tensor name {name!r}")
            nbytes = math.prod(shape) * torch.empty((), dtype=dt).element_size()
            header[name] = {"dtype": _CODES[dt], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # tensor data starts 8-byte aligned
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._specs):
            raise ValueError(f"unexpected tensor {name!r}: all declared tensors are written")
        exp_name, exp_dtype, exp_shape = self._specs[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != (exp_name, exp_dtype, exp_shape):
            raise ValueError(
                f"expected {exp_name} {exp_dtype} {exp_shape}, got {name} {tensor.dtype} {tuple(tensor.shape)}"
            )
        t = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self._f.write(memoryview(t.numpy()))  # little-endian, as safetensors requires
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._specs):
            raise ValueError(f"only {self._next} of {len(self._specs)} declared tensors were written")
        self._f.flush()


def peft_module_name(name: str) -> str:
    """PEFT module name -> base model module name ("base_model.model.x.q_proj" -> "x.q_proj")."""
    import re

    return re.sub(r"^(base_model\.model\.)+", "", name)


def read_lora_adapter(path: str | os.PathLike) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float]:
    """``({module: (A (r, d_in), B (d_out, r))}, scaling)`` of a saved PEFT LoRA adapter folder, float32:
    a module's update is ``scaling * B @ A`` (scaling alpha / r, or alpha / sqrt(r) with rsLoRA).
    Safetensors only; DoRA and per-module rank / alpha patterns are refused (one scaling would be wrong)."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg = read_json(path / "adapter_config.json")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise AsftError(f"{path}: no adapter_model.safetensors (only safetensors adapters are read)")
    if cfg.get("peft_type", "LORA") != "LORA" or cfg.get("use_dora"):
        raise AsftError(f"{path}: only plain LoRA adapters are supported (not "
                        f"{'DoRA' if cfg.get('use_dora') else cfg.get('peft_type')})")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise AsftError(f"{path}: adapters with per-module rank_pattern / alpha_pattern are not supported")
    if "r" not in cfg or "lora_alpha" not in cfg:
        raise AsftError(f"{path / 'adapter_config.json'}: no r / lora_alpha")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    tensors = load_file(str(weights))
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, A in tensors.items():
        if key.endswith(".lora_A.weight"):
            B = tensors.get(key.replace(".lora_A.weight", ".lora_B.weight"))
            if B is None:
                raise AsftError(f"{weights}: {key} has no lora_B partner")
            pairs[peft_module_name(key[: -len(".lora_A.weight")])] = (A.float(), B.float())
    if not pairs:
        raise AsftError(f"{weights}: no LoRA weights found")
    return pairs, scaling
