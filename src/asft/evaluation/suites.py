"""Evaluation suites: what each one reads, how long its answers may be, and how it is scored (its ``kind``).

Suites and the files they read under ``data_dir`` (the reference layout, ``.../asft-reference/eval``):

========== ====================================== ========== ========================================
suite      file                                   max new    score
========== ====================================== ========== ========================================
harmful    harmful/saved_dataset_250.json         512        HS = % of answers the judge flags; HS+
agnews     agnews/agnew_test_data.json            200        FA = accuracy (``asft.evaluation.metrics``)
sst2       SST2/SST2_test.jsonl                   200        FA
gsm8k      gsm8k/gsm8k_test_data.json             512        FA
alpaca     alpaca/question.jsonl (+ judge prompts, 512        mean 1-10 LLM-judge rating (``score``)
           reference answers)
========== ====================================== ========== ========================================

More suites come from plugins through ``register_suites``: ``import asft.toy`` adds ``toy-harmful``
and ``toy-<task>`` (the toy world's held-out sets, scored by its exact judge); this module never
imports the toy world.

The max-new-token defaults follow the reference (512 for the harmful prompts, 200 for AG News; the
reference used 200 for SST-2 and GSM8K too, we give GSM8K 512 so long worked solutions are not cut
before ``The final answer is:``); ``max_new_tokens=`` overrides them all. Decoding is greedy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from asft.errors import AsftError
from asft.evaluation import metrics
from asft.fileio import read_json

@dataclass(frozen=True)
class SuiteSpec:
    name: str
    kind: str  # "harmful" | "agnews" | "sst2" | "gsm8k" | "alpaca" | "task"
    path: str  # relative to data_dir
    max_new_tokens: int
    # kind "task": items {"instruction", "input", "label": str}; correct(response, label) -> bool
    correct: Callable[[str, str], bool] | None = None
    # the one judge that can read this suite's answers (the toy world's language: "toy"); None: any
    judge: str | None = None


SUITES = {
    "harmful": SuiteSpec("harmful", "harmful", "harmful/saved_dataset_250.json", 512),
    "agnews": SuiteSpec("agnews", "agnews", "agnews/agnew_test_data.json", 200),
    "sst2": SuiteSpec("sst2", "sst2", "SST2/SST2_test.jsonl", 200),
    "gsm8k": SuiteSpec("gsm8k", "gsm8k", "gsm8k/gsm8k_test_data.json", 512),
    "alpaca": SuiteSpec("alpaca", "alpaca", "alpaca/question.jsonl", 512),
}
# Plugins' suite resolvers: name -> SuiteSpec, or None when the name is not theirs.
_RESOLVERS: list[Callable[[str], SuiteSpec | None]] = []


_NAMES: list[str] = []  # how the plugins' suites are written, for help texts ("toy-<task>")


def register_suites(resolver: Callable[[str], SuiteSpec | None], names: tuple[str, ...] = ()) -> None:
    """Add suites defined elsewhere (``asft.toy`` registers ``toy-*``): ``resolver(name)`` returns the
    spec of a name it owns, else None; ``names`` says how they are written in help texts. Idempotent."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)
        _NAMES.extend(n for n in names if n not in _NAMES)


def suite_names() -> list[str]:
    """The built-in suites and the registered plugins' (patterns such as ``toy-<task>``)."""
    return [*SUITES, *_NAMES]


def needs_judge(name: str) -> bool:
    """Whether a suite is scored by a safety judge (its kind is ``harmful``)."""
    return suite_spec(name).kind == "harmful"


def needs_rater(name: str) -> bool:
    """Whether a suite's score needs an LLM rater (kind ``alpaca``: 1-10 ratings)."""
    return suite_spec(name).kind == "alpaca"


def suite_spec(name: str) -> SuiteSpec:
    """The spec of a suite name: a built-in one, or one a registered plugin resolves."""
    if name in SUITES:
        return SUITES[name]
    for resolve in _RESOLVERS:
        spec = resolve(name)
        if spec is not None:
            return spec
    hint = " (toy-* suites: `import asft.toy` first)" if name.startswith("toy-") else ""
    raise AsftError(f"unknown suite {name!r} (choose from {', '.join(suite_names())}){hint}")


def _need(path: Path, i: int, row: Any, key: str, typ: type | tuple) -> Any:
    if not isinstance(row, dict):
        raise AsftError(f"{path}: item {i} is not an object")
    value = row.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise AsftError(f"{path}: item {i} has no valid field {key!r}")
    return value


def load_suite(name: str, data_dir: str | Path, limit: int | None = None) -> list[dict]:
    """Items of a suite, each ``{"instruction", "input", ...gold fields}``; the first ``limit`` only."""
    spec = suite_spec(name)
    if data_dir is None:
        raise AsftError("no data dir given (pass --data-dir, e.g. .../asft-reference/eval)")
    path = Path(data_dir) / spec.path
    rows = read_json(path)
    if not isinstance(rows, list) or not rows:
        raise AsftError(f"{path}: expected a non-empty list of items")
    if limit is not None:
        rows = rows[:limit]
    items = []
    for i, r in enumerate(rows):
        item = {"instruction": None, "input": ""}
        if spec.kind == "alpaca":
            turns = _need(path, i, r, "turns", list)
            if not turns or not isinstance(turns[0], str):
                raise AsftError(f"{path}: item {i} has no first turn")
            item.update(instruction=turns[0], question_id=r.get("question_id"),
                        category=r.get("category", "general"))
        else:
            item["instruction"] = _need(path, i, r, "instruction", str)
            if isinstance(r.get("input"), str):
                item["input"] = r["input"]
        if spec.kind in ("agnews", "sst2"):
            label = _need(path, i, r, "label", int)
            if label not in range(len(metrics.AGNEWS_LABELS if spec.kind == "agnews" else metrics.SST2_LABELS)):
                raise AsftError(f"{path}: item {i} label {label} out of range")
            item["label"] = label
        elif spec.kind == "gsm8k":
            item["gold"] = _need(path, i, r, "output", str)
        elif spec.kind == "task":
            item["label"] = _need(path, i, r, "label", str)
        elif spec.kind == "harmful" and "family" in r:
            item["family"] = r["family"]
        items.append(item)
    if spec.kind == "alpaca":
        _attach_references(items, path.parent / "reference_answer" / "gpt-4.jsonl")
    return items


def _attach_references(items: list[dict], ref_path: Path) -> None:
    """MT-Bench reference answers by question id, used for math/reasoning/coding grading."""
    if not ref_path.is_file():
        return
    refs = {}
    for r in read_json(ref_path):
        try:
            refs[r["question_id"]] = r["choices"][0]["turns"][0]
        except (KeyError, IndexError, TypeError):
            continue
    for item in items:
        item["reference"] = refs.get(item["question_id"])




def suite_judge(name: str) -> str | None:
    """The judge a suite's answers need (``SuiteSpec.judge``); None for any judge or an unknown suite."""
    spec = SUITES.get(name) or next((s for r in _RESOLVERS if (s := r(name)) is not None), None)
    return spec.judge if spec is not None else None
