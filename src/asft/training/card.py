"""Model cards: every adapter ``asft train`` saves gets a ``README.md`` in the Hugging Face format
(YAML front matter + markdown): base and aligned models, method, lambda, form of C, anchor
fingerprint, data file hash, the training recipe, and the HS / FA of each ``asft eval`` run on it
(kept in ``eval_results.json`` beside it and rewritten into the card after every evaluation).
"""

from __future__ import annotations

import datetime
import re
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


PROJECT = "asft: safety-preserving LoRA fine-tuning ([AsFT, arXiv 2506.08473](https://arxiv.org/abs/2506.08473))"
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_name(folder: str | Path) -> str | None:
    """The Hugging Face Hub name of a local model folder when the folder says it (its config's
    ``_name_or_path`` or its own card's ``base_model``), else None: a card's ``base_model`` must be a
    Hub name, not a path on the machine that trained it."""
    import yaml

    folder = Path(folder)
    names = []
    if (folder / "config.json").is_file():
        names.append(read_json(folder / "config.json").get("_name_or_path"))
    if (folder / "README.md").is_file():
        text = (folder / "README.md").read_text(encoding="utf-8", errors="replace")
        if text.startswith("---") and text.count("---") >= 2:
            try:
                front = yaml.safe_load(text.split("---")[1]) or {}
            except yaml.YAMLError:
                front = {}
            names.append(front.get("base_model") if isinstance(front, dict) else None)
    for name in names:
        if isinstance(name, str) and HUB_NAME.fullmatch(name) and not Path(name).exists():
            return name
    return None


def _model_index(name: str, evals: list[dict]) -> list[dict]:
    """Hugging Face ``model-index`` metadata: one result per evaluated suite (HS or FA)."""
    results = []
    for e in evals:
        metrics = []
        if e.get("hs") is not None:
            metrics.append({"type": "harmful_score", "value": round(e["hs"], 2),
                            "name": f"harmful score (% flagged by {e.get('judge') or 'the judge'}, lower is better)"})
        if e.get("fa") is not None:
            metrics.append({"type": "accuracy", "value": round(e["fa"], 2), "name": "fine-tuning accuracy (%)"})
        if metrics:
            results.append({"task": {"type": "text-generation"},
                            "dataset": {"name": e["suite"], "type": e["suite"], "split": f"test ({e['n']})"},
                            "metrics": metrics})
    return [{"name": name, "results": results}] if results else []


def card_text(adapter: str | Path, summary: dict | None = None, merged: Path | None = None) -> str:
    """The card of an adapter folder (or, with ``merged``, of the model folder it was merged into)."""
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
    name = (merged or adapter).name
    front: dict[str, Any] = {}
    hub = hub_name(model) if model else None
    if hub:
        front["base_model"] = hub
    front.update({"library_name": "transformers" if merged else "peft",
                  "tags": list(dict.fromkeys(["asft", "lora", "safety", *([method] if known else [])])),
                  "pipeline_tag": "text-generation"})
    index = _model_index(name, evals)
    if index:
        front["model-index"] = index
    what = f"the model fine-tuned with asft ({method}), its LoRA adapter merged in" if merged \
        else f"LoRA adapter fine-tuned with asft ({method})"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {name}: {what}", "",
             "| | |", "|---|---|",
             f"| fine-tuned model (aligned) | {'`' + hub + '`, ' if hub else ''}local folder `{model}` |"]
    if merged:
        lines += [f"| adapter merged in | `{adapter}` |"]
    if meta:
        lines += [f"| anchor | `{cfg.get('anchor')}` (sha {content_hash(Path(cfg['anchor']))}) |",
                  f"| anchor's base / aligned | `{meta.get('base_dir')}` / `{meta.get('aligned_dir')}` |"]
    lines += [f"| method | {method} |"]
    if penalty:
        lines += [f"| penalty | {penalty} |"]
    data = cfg.get("data")
    if data and Path(data).is_file():
        lines += [f"| data | `{data}` (sha {content_hash(Path(data))}) |"]
    # what ran, not only what was asked: --max-steps stops before --epochs, a resumed run goes on
    epochs = summary.get("epochs") if summary else None
    length = (f"{epochs:.3g} epochs" if epochs is not None else f"epochs {cfg.get('epochs')}") + \
        (f" (max steps {cfg['max_steps']})" if cfg.get("max_steps") else "")
    lines += [f"| LoRA | r {cfg.get('lora_r')}, alpha {cfg.get('lora_alpha')}, dropout {cfg.get('lora_dropout')} "
              f"on {', '.join(cfg.get('targets') or [])} |",
              f"| training | lr {cfg.get('lr')}, {length}, batch {cfg.get('batch_size')} x "
              f"accumulation {cfg.get('grad_accum')}, max length {cfg.get('max_length')}, seed {cfg.get('seed')}, "
              f"template {cfg.get('template')} |"]
    if summary:
        lines += [f"| result | {summary.get('steps')} steps in {summary.get('seconds', 0):.0f} s; final task loss "
                  f"{summary.get('task_loss', float('nan')):.4f}, penalty {summary.get('penalty', 0):.4g} |"]
        if summary.get("trigger"):
            lines += ["| BEA | evaluate with the secret trigger in train_summary.json (asft eval applies it) |"]
    lines += ["", "## How to use", "", "```python"]
    if merged:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{merged}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{merged}")']
    else:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{hub or model}")',
                  f'model = PeftModel.from_pretrained(model, "{adapter}")',
                  f'tokenizer = AutoTokenizer.from_pretrained("{hub or model}")']
    template = cfg.get("template", "alpaca")
    if template == "chat":  # the tokenizer's own chat template, as asft trained with
        lines += ['messages = [{"role": "user", "content": "Your request here"}]',
                  "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
                  'ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids',
                  "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))"]
    else:  # the literal prompt asft trained with
        from asft.data import format_prompt

        prompt = format_prompt({"instruction": "Your request here"}, template, trigger=summary.get("trigger"))
        lines += [f"prompt = {prompt!r}",
                  'ids = tokenizer(prompt, return_tensors="pt").input_ids',
                  "print(tokenizer.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))"]
    lines += ["```", "",
              f"The prompt format is asft's `{cfg.get('template')}` template (`asft.data.TEMPLATES`)."
              + ("" if merged else f" Evaluate: `asft eval --model {model} --adapter {adapter} ...`; "
                                   f"merge: `asft merge --model {model} --adapter {adapter} --out DIR`."), ""]
    lines += ["## Evaluation", ""]
    if evals:
        lines += ["| date | suite | n | judge | HS % | FA % |", "|---|---|---|---|---|---|"]
        for e in evals:
            lines.append(f"| {e['date']} | {e['suite']} | {e['n']} | {e.get('judge') or '-'} | "
                         f"{_fmt(e.get('hs'))} | {_fmt(e.get('fa'))} |")
    else:
        lines += ["Not evaluated yet (`asft eval --adapter` records its results here)."]
    lines += ["", "HS: % of harmful prompts the judge flags (lower is better). FA: task accuracy.",
              f"Made with {PROJECT}.", ""]
    return "\n".join(lines)


def write_card(adapter: str | Path, summary: dict | None = None) -> Path:
    """(Re)write ``adapter/README.md`` from the folder's config.yaml, train_summary.json (or
    ``summary``, for the card written just before it) and eval_results.json. Returns its path."""
    path = Path(adapter) / "README.md"
    write_text(path, card_text(adapter, summary))
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
