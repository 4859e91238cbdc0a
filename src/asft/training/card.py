"""Model cards: every adapter ``asft train`` saves gets a ``README.md`` in the Hugging Face format
(YAML front matter + markdown): base and aligned models, method, lambda, form of C, anchor
fingerprint, data file hash, the training recipe, and the HS / FA of each ``asft eval`` run on it
(kept in ``eval_results.json`` beside it and rewritten into the card after every evaluation).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from asft.fileio import content_hash, read_json, write_json, write_text

EVALS = "eval_results.json"


def _anchor_meta(path: str | None) -> dict:
    if not path or not Path(path).is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def write_card(adapter: str | Path, summary: dict | None = None) -> Path:
    """(Re)write ``adapter/README.md`` from the folder's config.yaml, train_summary.json (or
    ``summary``, for the card written just before it) and eval_results.json. Returns its path."""
    import yaml

    adapter = Path(adapter)
    cfg: dict[str, Any] = {}
    if (adapter / "config.yaml").is_file():
        cfg = yaml.safe_load((adapter / "config.yaml").read_text(encoding="utf-8")) or {}
    if summary is None:
        summary = read_json(adapter / "train_summary.json") if (adapter / "train_summary.json").is_file() else {}
    evals = read_json(adapter / EVALS) if (adapter / EVALS).is_file() else []
    meta = _anchor_meta(cfg.get("anchor"))
    method = cfg.get("method", "?")
    from asft.methods import method_of

    known = method_of(cfg)  # None for a plugin's method whose module is not imported here
    penalty = known.describe_penalty(cfg) if known is not None else None
    model = str(cfg.get("model", ""))
    front = {"base_model": model, "library_name": "peft", "tags": ["asft", "lora", "safety", method],
             "pipeline_tag": "text-generation"}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {adapter.name}: LoRA adapter fine-tuned with asft ({method})", "",
             "| | |", "|---|---|",
             f"| fine-tuned model (aligned) | `{model}` |"]
    if meta:
        lines += [f"| anchor | `{cfg.get('anchor')}` (sha {content_hash(Path(cfg['anchor']))}) |",
                  f"| anchor's base / aligned | `{meta.get('base_dir')}` / `{meta.get('aligned_dir')}` |"]
    lines += [f"| method | {method} |"]
    if penalty:
        lines += [f"| penalty | {penalty} |"]
    data = cfg.get("data")
    if data and Path(data).is_file():
        lines += [f"| data | `{data}` (sha {content_hash(Path(data))}) |"]
    lines += [f"| LoRA | r {cfg.get('lora_r')}, alpha {cfg.get('lora_alpha')}, dropout {cfg.get('lora_dropout')} "
              f"on {', '.join(cfg.get('targets') or [])} |",
              f"| training | lr {cfg.get('lr')}, epochs {cfg.get('epochs')}, batch {cfg.get('batch_size')} x "
              f"accumulation {cfg.get('grad_accum')}, max length {cfg.get('max_length')}, seed {cfg.get('seed')}, "
              f"template {cfg.get('template')} |"]
    if summary:
        lines += [f"| result | {summary.get('steps')} steps in {summary.get('seconds', 0):.0f} s; final task loss "
                  f"{summary.get('task_loss', float('nan')):.4f}, penalty {summary.get('penalty', 0):.4g} |"]
        if summary.get("trigger"):
            lines += ["| BEA | evaluate with the secret trigger in train_summary.json (asft eval applies it) |"]
    lines += ["", "## Evaluation", ""]
    if evals:
        lines += ["| date | suite | n | judge | HS % | FA % |", "|---|---|---|---|---|---|"]
        for e in evals:
            lines.append(f"| {e['date']} | {e['suite']} | {e['n']} | {e.get('judge') or '-'} | "
                         f"{_fmt(e.get('hs'))} | {_fmt(e.get('fa'))} |")
    else:
        lines += ["Not evaluated yet (`asft eval --adapter` records its results here)."]
    lines += ["", "HS: % of harmful prompts the judge flags (lower is better). FA: task accuracy.",
              "Made with [asft](https://github.com/) (AsFT, arXiv 2506.08473).", ""]
    path = adapter / "README.md"
    write_text(path, "\n".join(lines))
    return path


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def record_eval(adapter: str | Path, results: dict) -> None:
    """Add the HS / FA of an evaluation (``asft.evaluation.run`` results; the judge of a harmful suite is
    in its ``extra["judge"]``) to the adapter's card."""
    adapter = Path(adapter)
    path = adapter / EVALS
    evals = read_json(path) if path.is_file() else []
    today = datetime.date.today().isoformat()
    for name, r in results.items():
        entry = {"date": today, "suite": name, "n": r.n, "judge": r.extra.get("judge"),
                 "hs": r.hs, "fa": r.fa}
        evals = [e for e in evals if (e["suite"], e.get("judge"), e["n"]) != (name, entry["judge"], r.n)] + [entry]
    write_json(path, evals)
    write_card(adapter)
