"""The caches of an evaluation: generation checkpoints and finished results in the out dir, the
shared store of finished suites (``eval_store``), and the identities of models they are keyed by."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from asft.errors import AsftError
from asft.evaluation.results import SuiteResult
from asft.fileio import content_hash, read_json, write_json, write_jsonl


def model_fingerprint(model: Any) -> str:
    """A content checksum of an in-memory model: per parameter, its name, shape, sum and sum of squares.

    One pass over the weights on their device (a 7B model on a GPU: well under a second).
    """
    import torch

    parts = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            x = p.detach().to(torch.float64) if p.device.type != "mps" else p.detach().float()
            parts.append(f"{name}{tuple(p.shape)}{x.sum().item():.10e}{(x * x).sum().item():.10e}")
    return content_hash("".join(parts).encode())


def load_generations(path: Path, key: str, n: int) -> dict[int, str]:
    """Responses checkpointed by an earlier run with the same key (a torn last line is ignored)."""
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        return {}
    if header.get("key") != key:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            if 0 <= row["i"] < n and isinstance(row["response"], str):
                done[row["i"]] = row["response"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def load_cached(out_dir: Path, name: str, key: str) -> SuiteResult | None:
    result_path, rows_path = out_dir / f"{name}.result.json", out_dir / f"{name}.jsonl"
    if not (result_path.is_file() and rows_path.is_file()):
        return None
    try:
        result = read_json(result_path)
    except AsftError:
        return None
    if not isinstance(result, dict) or result.get("key") != key:
        return None
    s = dict(result["summary"])
    res = SuiteResult(**{k: s.pop(k) for k in ("suite", "n", "hs", "hs_plus", "fa", "fa_ref", "score")})
    res.extra, res.rows = s, read_json(rows_path)
    return res


def eval_store() -> Path | None:
    """The shared store of finished suite results: ``$ASFT_EVAL_CACHE`` (``off`` or empty: none),
    else ``~/.cache/asft/evals``."""
    env = os.environ.get("ASFT_EVAL_CACHE")
    if env is not None:
        return None if env.strip() in ("", "off") else Path(env)
    return Path.home() / ".cache" / "asft" / "evals"


def save_result(out_dir: Path, res: SuiteResult, key: str) -> None:
    write_jsonl(out_dir / f"{res.suite}.jsonl", res.rows)
    write_json(out_dir / f"{res.suite}.result.json", {"key": key, "summary": res.summary()})


def folder_model_key(model_dir: str | Path, adapter: str | Path | None = None, merge: bool = False,
                     dtype: Any = "auto", device: str | None = None) -> dict:
    """The cache identity of a model folder (+ adapter) as evaluated: contents, not paths, so the same
    model evaluated from two places (``asft eval``, ``asft experiment``) shares the stored results."""
    from asft.models import modeling
    from asft.models.checkpoints import folder_identity

    return {"model": folder_identity(model_dir), "adapter": folder_identity(adapter) if adapter else None,
            "merge": bool(merge and adapter), "dtype": str(modeling.resolve_dtype(dtype, device))}


