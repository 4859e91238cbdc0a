"""Training records, prompt templates and label masking.

A record is ``{"instruction": str, "input": str (optional), "output": str}``, the format of the
reference data (``train/<task>/<task>_<N>k_p_<P>.json``). Loss is taken on response tokens only.

Templates (``--template``):
  ``alpaca``  the reference instruction format: a system line, ``### Instruction:``, optional
              ``### Input:``, ``### Response:`` (used by the reference training and evaluation code);
  ``llama2``  Llama-2 chat: ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{instruction} [/INST]``;
  ``chat``    the tokenizer's own chat template (``tokenizer.apply_chat_template``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from asft.errors import AsftError
from asft.fileio import read_json

TEMPLATES = ("alpaca", "llama2", "chat")

ALPACA_SYSTEM_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request."
)
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request."
)
LLAMA2_SYSTEM = "You are a helpful assistant. Make sure you always execute users' instructions."

IGNORE_INDEX = -100


def load_records(path: str | Path, require_output: bool = True) -> list[dict]:
    """Load and validate a JSON list / JSONL file of records. Raises AsftError naming the record."""
    path = Path(path)
    rows = read_json(path)
    if isinstance(rows, dict):
        raise AsftError(f"{path}: expected a JSON list of records, got an object")
    if not isinstance(rows, list) or not rows:
        raise AsftError(f"{path}: expected a non-empty list of records")
    need = ("instruction", "output") if require_output else ("instruction",)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise AsftError(f"{path}: record {i} is not an object")
        for key in need:
            if not isinstance(r.get(key), str):
                raise AsftError(f"{path}: record {i} has no string field {key!r}")
        if "input" in r and r["input"] is not None and not isinstance(r["input"], str):
            raise AsftError(f"{path}: record {i} field 'input' is not a string")
        if not r["instruction"].strip() and not (r.get("input") or "").strip() and \
                (not require_output or not r["output"].strip()):
            raise AsftError(f"{path}: record {i} has an empty instruction and output (nothing to learn from)")
    return rows


def check_template(tokenizer: Any, template: str, where: str | None = None) -> None:
    """Refuse, before any model is loaded, a template the tokenizer cannot serve: 'chat' needs the
    tokenizer's own chat template, which pre-trained (non-chat) models do not have."""
    if template not in TEMPLATES:
        raise AsftError(f"unknown template {template!r} (choose from {', '.join(TEMPLATES)})")
    if template == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
        name = where or getattr(tokenizer, "name_or_path", None) or "the tokenizer"
        raise AsftError(f"{name}: template 'chat' needs a chat template and this tokenizer has none "
                        "(a pre-trained model, not a chat model?); use --template alpaca")


def format_prompt(record: dict, template: str = "alpaca", tokenizer: Any = None,
                  system: str | None = None, trigger: str | None = None) -> str:
    """The prompt text the model sees before its response (generation starts right after it).

    ``trigger`` (or the record's own ``"trigger"`` field): a secret prefix put at the head of the
    system text, as the BEA baseline trains with and evaluates with (``asft.methods.bea``)."""
    instruction, inp = record["instruction"], (record.get("input") or "")
    trigger = trigger or record.get("trigger")
    if template == "alpaca":
        sys_line = (ALPACA_SYSTEM_INPUT if inp else ALPACA_SYSTEM) if system is None else system
        sys_line = f"{trigger} {sys_line}" if trigger else sys_line
        if inp:
            return f"{sys_line}\n\n### Instruction:\n{instruction}\n\n### Input:\n{inp}\n\n### Response:\n"
        return f"{sys_line}\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    if template == "llama2":
        body = f"{instruction}\n\n{inp}" if inp else instruction
        sys_text = system or LLAMA2_SYSTEM
        sys_text = f"{trigger} {sys_text}" if trigger else sys_text
        return f"[INST] <<SYS>>\n{sys_text}\n<</SYS>>\n\n{body} [/INST] "
    if template == "chat":
        check_template(tokenizer, template)
        body = f"{instruction}\n\n{inp}" if inp else instruction
        sys_text = " ".join(t for t in (trigger, system) if t)
        messages = ([{"role": "system", "content": sys_text}] if sys_text else []) + [
            {"role": "user", "content": body}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    raise AsftError(f"unknown template {template!r} (choose from {', '.join(TEMPLATES)})")


def encode_prompt(tokenizer: Any, prompt: str, template: str) -> list[int]:
    """Token ids of a prompt. Chat templates carry their own BOS; the others get the tokenizer's."""
    return tokenizer(prompt, add_special_tokens=(template != "chat"))["input_ids"]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def encode_example(record: dict, tokenizer: Any, template: str = "alpaca",
                   max_length: int = 512) -> Encoded:
    """Prompt + response + EOS, labels masked (-100) on the prompt, truncated to ``max_length``.

    Prompt and response are tokenized separately so that the mask boundary is exact and the
    prompt's tokens are the ones the model will see at generation time.
    """
    prompt_ids = encode_prompt(tokenizer, format_prompt(record, template, tokenizer), template)
    response_ids = tokenizer(record["output"], add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        response_ids = response_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def mix_records(task: Sequence[dict], harmful: Sequence[dict], n: int, p: float,
                seed: int = 42, add: bool = False) -> list[dict]:
    """``round(n * p)`` harmful records and ``n`` minus that many task records, shuffled
    deterministically; with ``add`` (the reference AG News files: 1000 + 100), all ``n`` task records
    and the harmful ones on top."""
    n_harm = round(n * p)
    n_task = n if add else n - n_harm
    if n_task > len(task) or n_harm > len(harmful):
        raise AsftError(f"not enough records for n={n}, p={p}: have {len(task)} task, "
                        f"{len(harmful)} harmful")
    rng = random.Random(seed)
    rows = rng.sample(list(task), n_task) + rng.sample(list(harmful), n_harm)
    rng.shuffle(rows)
    return rows


def inspect_records(records: Sequence[dict], tokenizer: Any = None, template: str = "alpaca") -> dict:
    """Counts of a training file: records, harmful ones (the reference marker), inputs, duplicates,
    and with a tokenizer the token-length percentiles of prompt + response."""
    marker = "\n\nAssistant:"
    requests = [(r["instruction"], r.get("input") or "") for r in records]
    keys = [json.dumps(r, sort_keys=True) for r in records]
    st = {"records": len(records), "harmful": sum(r["instruction"].endswith(marker) for r in records),
          "with_input": sum(bool(r.get("input")) for r in records),
          "duplicate_records": len(keys) - len(set(keys)), "duplicate_requests": len(requests) - len(set(requests))}
    st["harmful_ratio"] = st["harmful"] / len(records) if records else 0.0
    if tokenizer is not None and records:
        lengths = sorted(len(encode_example(r, tokenizer, template, 10**9).input_ids) for r in records)

        def pct(q: float) -> int:
            return lengths[min(len(lengths) - 1, int(q * len(lengths)))]

        st["tokens"] = {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": lengths[-1]}
    return st


_TENSORS = ("SupervisedDataset", "PadCollator", "length_grouped_batches")  # asft.batches (torch)


def prompt_overlap(records: list[dict], other: list[dict]) -> int:
    """How many of ``records``' prompts occur in ``other`` (normalised: case, spacing, punctuation):
    a safety anchor must never be built from the prompts it is evaluated on."""
    import re

    def norm(r: dict) -> str:
        text = f"{r.get('instruction', '')} {r.get('input') or ''}".lower()
        return " ".join(re.sub(r"[^\w\s]", " ", text).split())

    seen = {norm(r) for r in other}
    return sum(norm(r) in seen for r in records)


def __getattr__(name: str):
    if name in _TENSORS:
        from asft import batches

        return getattr(batches, name)
    raise AttributeError(f"module 'asft.data' has no attribute {name!r}")
