"""Evaluation suites: harmful score (HS) and fine-tuning accuracy (FA) of a model, as in the paper.

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

Outputs in ``out_dir`` (all written atomically): ``<suite>.jsonl`` (every prompt, response and
verdict / correctness), ``<suite>.result.json`` (metrics + cache key), ``summary.json`` and
``summary.md``. Generation checkpoints into ``<suite>.generations.jsonl`` after every batch; a rerun
with the same out dir resumes from it, and a suite whose ``result.json`` key matches is reused
without generating or judging. The generation key hashes the model identity (folder fingerprint or
in-memory weight checksum), adapter, suite data file, template, max new tokens, limit and engine;
the result key adds the judge's settings, so changing only the judge re-judges stored responses.

A finished suite is also kept in a shared store (``store``: ``eval_store()``, by default
``~/.cache/asft/evals``), one folder per result key: another out dir evaluating the same model (same
content, whatever its path) with the same settings copies the result instead of generating again,
e.g. ``asft experiment``'s ``aligned`` row after ``asft eval`` of that model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from asft.evaluation import metrics
from asft.data import check_template, format_prompt
from asft.errors import AsftError
from asft.fileio import append_jsonl, content_hash, read_json, write_json, write_jsonl, write_text
from asft.evaluation.judges import Judge, OpenAIClient, load_judge_prompts, make_judge, rate_answers

# generate_fn(prompts, max_new_tokens, add_special_tokens, on_batch, desc, decided=None) -> responses;
# decided(i, text) True: prompt i's answer can no longer change its score (stop generating it).
GenerateFn = Callable[..., list[str]]


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    kind: str  # "harmful" | "agnews" | "sst2" | "gsm8k" | "alpaca" | "task"
    path: str  # relative to data_dir
    max_new_tokens: int
    # kind "task": items {"instruction", "input", "label": str}; correct(response, label) -> bool
    correct: Callable[[str, str], bool] | None = None


SUITES = {
    "harmful": SuiteSpec("harmful", "harmful", "harmful/saved_dataset_250.json", 512),
    "agnews": SuiteSpec("agnews", "agnews", "agnews/agnew_test_data.json", 200),
    "sst2": SuiteSpec("sst2", "sst2", "SST2/SST2_test.jsonl", 200),
    "gsm8k": SuiteSpec("gsm8k", "gsm8k", "gsm8k/gsm8k_test_data.json", 512),
    "alpaca": SuiteSpec("alpaca", "alpaca", "alpaca/question.jsonl", 512),
}
# Plugins' suite resolvers: name -> SuiteSpec, or None when the name is not theirs.
_RESOLVERS: list[Callable[[str], SuiteSpec | None]] = []


def register_suites(resolver: Callable[[str], SuiteSpec | None]) -> None:
    """Add suites defined elsewhere (``asft.toy`` registers ``toy-*``). Idempotent."""
    if resolver not in _RESOLVERS:
        _RESOLVERS.append(resolver)


def suite_spec(name: str) -> SuiteSpec:
    """The spec of a suite name: a built-in one, or one a registered plugin resolves."""
    if name in SUITES:
        return SUITES[name]
    for resolve in _RESOLVERS:
        spec = resolve(name)
        if spec is not None:
            return spec
    hint = " (toy-* suites: `import asft.toy` first)" if name.startswith("toy-") else ""
    raise AsftError(f"unknown suite {name!r} (choose from {', '.join(SUITES)}, or a registered one){hint}")


# ----------------------------------------------------------------------------------------------
# loading


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


# ----------------------------------------------------------------------------------------------
# results


@dataclass
class SuiteResult:
    """Metrics of one suite (percentages 0-100; None where a metric does not apply) + per-item rows."""

    suite: str
    n: int
    hs: float | None = None        # % of answers flagged harmful
    hs_plus: float | None = None   # % flagged or degenerate
    fa: float | None = None        # accuracy, this project's rule (asft.evaluation.metrics)
    fa_ref: float | None = None    # accuracy, the reference scripts' rule
    score: float | None = None     # alpaca: mean judge rating 1-10
    extra: dict = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        keys = ("suite", "n", "hs", "hs_plus", "fa", "fa_ref", "score")
        return {**{k: getattr(self, k) for k in keys}, **self.extra}


def _score(spec: SuiteSpec, items: list[dict], prompts: list[str], responses: list[str],
           judge: Judge | None, rater: OpenAIClient | None, data_dir: Path) -> SuiteResult:
    n = len(items)
    rows = [{"i": i, "instruction": it["instruction"], "input": it["input"], "prompt": p, "response": r}
            for i, (it, p, r) in enumerate(zip(items, prompts, responses))]
    res = SuiteResult(spec.name, n, rows=rows)
    if spec.kind == "harmful":
        if judge is None:
            raise AsftError(f"suite {spec.name} needs a judge (--judge)")
        questions = [_question(it) for it in items]
        verdicts = judge(questions, responses)
        if len(verdicts) != n:
            raise AsftError(f"judge returned {len(verdicts)} verdicts for {n} answers")
        for row, it, v in zip(rows, items, verdicts):
            row.update(v.to_dict(), degenerate=metrics.is_degenerate(row["response"]))
            if "family" in it:
                row["family"] = it["family"]
        flagged = sum(r["flagged"] for r in rows)
        res.hs = metrics.percent(flagged, n)
        res.hs_plus = metrics.percent(sum(r["flagged"] or r["degenerate"] for r in rows), n)
        res.extra["judge"] = judge.name
        unparsed = sum(bool(v.extra.get("unparsed")) for v in verdicts)
        if unparsed:
            res.extra["n_unparsed"] = unparsed
    elif spec.kind in ("agnews", "sst2", "gsm8k"):
        fn = {"agnews": metrics.agnews_correct, "sst2": metrics.sst2_correct, "gsm8k": metrics.gsm8k_correct}[spec.kind]
        for row, it in zip(rows, items):
            gold = it["gold"] if spec.kind == "gsm8k" else it["label"]
            row["gold"] = gold
            row["correct"], row["correct_ref"] = fn(row["response"], gold)
            if spec.kind == "gsm8k":
                row["pred_number"] = metrics.extract_final_number(row["response"])
        res.fa = metrics.percent(sum(r["correct"] for r in rows), n)
        res.fa_ref = metrics.percent(sum(r["correct_ref"] for r in rows), n)
    elif spec.kind == "task":
        for row, it in zip(rows, items):
            row["gold"] = it["label"]
            row["correct"] = bool(spec.correct(row["response"], it["label"]))
        res.fa = metrics.percent(sum(r["correct"] for r in rows), n)
    elif spec.kind == "alpaca":
        for row, it in zip(rows, items):
            row.update(question_id=it["question_id"], category=it["category"])
        if rater is None:
            res.extra["note"] = "unrated: the alpaca score needs an LLM judge (--judge openai)"
        else:
            prompts_file = data_dir / "alpaca" / "judge_prompts.jsonl"
            ratings = rate_answers(rater, load_judge_prompts(prompts_file), [it["instruction"] for it in items],
                                   responses, [it["category"] for it in items],
                                   [it.get("reference") for it in items])
            for row, rt in zip(rows, ratings):
                row.update(rating=rt.rating, judge_reply=rt.reply)
            got = [rt.rating for rt in ratings if rt.rating is not None]
            res.score = round(sum(got) / len(got), 3) if got else None
            res.extra["n_unparsed"] = n - len(got)
    return res


def _question(item: dict) -> str:
    """The question shown to a safety judge: the instruction (with its input, if any)."""
    return f"{item['instruction']}\n\n{item['input']}" if item.get("input") else item["instruction"]


# ----------------------------------------------------------------------------------------------
# caching


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


def _load_generations(path: Path, key: str, n: int) -> dict[int, str]:
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


def _load_cached(out_dir: Path, name: str, key: str) -> SuiteResult | None:
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


def _save(out_dir: Path, res: SuiteResult, key: str) -> None:
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


# ----------------------------------------------------------------------------------------------
# running


def evaluate(make_generate: Callable[[], GenerateFn], tokenizer: Any, suites: Sequence[str],
             data_dir: str | Path, judge: Judge | str | None = None, out_dir: str | Path | None = None,
             template: str = "alpaca", max_new_tokens: int | None = None, limit: int | None = None,
             rater: OpenAIClient | None = None, model_key: Any = None, engine: str = "hf",
             log: Callable[[str], None] | None = None, early_stop: bool = True,
             trigger: str | None = None, fa_mode: str = "generate",
             make_scorer: Callable[[], Callable] | None = None,
             store: str | Path | None = None) -> dict[str, SuiteResult]:
    """Run ``suites`` with a generation function built on first need by ``make_generate()``.

    ``fa_mode="likelihood"``: AG News and SST-2 answers are the label with the highest likelihood
    as the prompt's continuation (``asft.evaluation.likelihood``; ``make_scorer()`` returns
    ``scorer(prompts, labels, add_special_tokens) -> log-probs``), no generation. Off by default.

    ``trigger``: a secret prompt put at the head of every prompt's system text (the BEA baseline's;
    ``adapter_trigger`` reads it from an adapter folder).

    ``early_stop``: stop an AG News / SST-2 answer as soon as both of its scores are final
    (``metrics.agnews_decided`` / ``sst2_decided``: provably the same FA and FA-ref as the full
    answer). Harmful suites always generate in full: no judge's verdict is final early for HS+.

    ``make_generate`` is lazy so that a rerun whose suites are all cached never loads the model.
    ``model_key`` identifies the model for the cache (required with ``out_dir`` or ``store``).
    ``store``: the shared store of finished suites (``eval_store()``; None: out dir only). ``judge``:
    a Judge or the name of one that needs no settings ("keyword", "toy").
    """
    if isinstance(judge, str):
        judge = make_judge(judge)
    check_template(tokenizer, template)  # before any model is loaded
    if not suites:
        raise AsftError("no suites to evaluate")
    if fa_mode not in ("generate", "likelihood"):
        raise AsftError(f"unknown FA mode {fa_mode!r} (generate or likelihood)")
    if fa_mode == "likelihood" and make_scorer is None:
        raise AsftError("the likelihood FA mode needs a scorer (the hf engine)")
    if data_dir is None:
        raise AsftError("no data dir given (pass --data-dir, e.g. .../asft-reference/eval)")
    data_dir = Path(data_dir)
    out = Path(out_dir) if out_dir is not None else None
    store = Path(store) if store is not None else None
    if (out is not None or store is not None) and model_key is None:
        raise AsftError("evaluate: a model_key is needed to cache results in out_dir or a store")
    log = log or (lambda msg: None)
    specs = [suite_spec(s) for s in suites]  # validate every name before any work
    from asft.runtime import result_key

    env = result_key()  # library versions, CPU instruction set, device: they can change answers
    generate_fn: GenerateFn | None = None
    results: dict[str, SuiteResult] = {}
    for spec in specs:
        items = load_suite(spec.name, data_dir, limit)
        n_new = max_new_tokens or spec.max_new_tokens
        data_file = data_dir / spec.path
        decided = _decided(spec.kind, items) if early_stop else None
        by_likelihood = fa_mode == "likelihood" and spec.kind in ("agnews", "sst2")
        gen_key = content_hash({"model": model_key, "suite": spec.name, "early_stop": decided is not None,
                                **({"fa_mode": "likelihood"} if by_likelihood else {}),
                                "trigger": trigger,
                                "data": content_hash(data_file) if data_file.is_file() else "absent",
                                "template": template, "max_new_tokens": n_new, "limit": limit,
                                "engine": engine, "env": env})
        result_key = content_hash({"gen": gen_key, "judge": judge.describe() if judge and spec.kind == "harmful" else None,
                            "rater": rater.describe() if rater and spec.kind == "alpaca" else None,
                            "metrics": 1})
        shelf = store / result_key if store is not None else None
        cached = _load_cached(out, spec.name, result_key) if out is not None else None
        if cached is not None:
            log(f"{spec.name}: reusing finished results in {out}")
            if shelf is not None and _load_cached(shelf, spec.name, result_key) is None:
                _save(shelf, cached, result_key)  # results from before the store serve others too
        elif shelf is not None:
            cached = _load_cached(shelf, spec.name, result_key)
            if cached is not None:
                log(f"{spec.name}: reusing the same model's finished results in {shelf}")
                if out is not None:
                    _save(out, cached, result_key)
        if cached is not None:
            results[spec.name] = cached
            continue
        prompts = [format_prompt(it, template, tokenizer, trigger=trigger) for it in items]
        responses: dict[int, str] = {}
        gen_path = out / f"{spec.name}.generations.jsonl" if out is not None else None
        if gen_path is not None:
            responses = _load_generations(gen_path, gen_key, len(items))
            if responses:
                log(f"{spec.name}: resuming, {len(responses)}/{len(items)} responses already generated")
            else:
                out.mkdir(parents=True, exist_ok=True)
                write_text(gen_path, json.dumps({"key": gen_key, "suite": spec.name, "n": len(items)}) + "\n")
        todo = [i for i in range(len(items)) if i not in responses]
        if todo and by_likelihood:
            labels = list(metrics.AGNEWS_LABELS if spec.kind == "agnews" else metrics.SST2_LABELS)
            log(f"{spec.name}: scoring {len(todo)} prompts by label likelihood ({', '.join(labels)})")
            scores = make_scorer()([prompts[i] for i in todo], labels, template != "chat")
            for i, row in zip(todo, scores):
                responses[i] = labels[max(range(len(labels)), key=row.__getitem__)]
                if gen_path is not None:
                    append_jsonl(gen_path, {"i": i, "response": responses[i], "label_logprobs": row})
            todo = []
        if todo:
            if generate_fn is None:
                generate_fn = make_generate()

            def checkpoint(idx: list[int], texts: list[str], _todo=todo) -> None:
                for j, t in zip(idx, texts):
                    responses[_todo[j]] = t
                    if gen_path is not None:
                        append_jsonl(gen_path, {"i": _todo[j], "response": t})

            log(f"{spec.name}: generating {len(todo)} responses (at most {n_new} new tokens each; "
                f"result key {result_key}, cached nowhere)")
            local = (lambda j, text, _todo=todo: decided(_todo[j], text)) if decided else None
            generate_fn([prompts[i] for i in todo], n_new, template != "chat", checkpoint, spec.name,
                        decided=local)
            if any(i not in responses for i in todo):
                raise AsftError(f"{spec.name}: the generator returned fewer responses than prompts")
        res = _score(spec, items, prompts, [responses[i] for i in range(len(items))], judge, rater, data_dir)
        res.extra.update(template=template, max_new_tokens=n_new, early_stop=decided is not None,
                         trigger=trigger is not None)
        if by_likelihood:
            res.extra["fa_mode"] = "likelihood"
        for where in (out, shelf):
            if where is not None:
                _save(where, res, result_key)
        results[spec.name] = res
    if out is not None:
        write_summary(out, results, model=content_hash(model_key))
    return results


def evaluate_model(model: Any, tokenizer: Any, suites: Sequence[str], data_dir: str | Path,
                   judge: Judge | str | None = None, out_dir: str | Path | None = None, template: str = "alpaca",
                   batch_size: int = 16, max_new_tokens: int | None = None, limit: int | None = None,
                   rater: OpenAIClient | None = None, model_key: Any = None, progress: bool = True,
                   log: Callable[[str], None] | None = None, trigger: str | None = None,
                   store: str | Path | None = None) -> dict[str, SuiteResult]:
    """Evaluate an already loaded model (e.g. an in-memory PEFT model) on ``suites``.

    Returns {suite: SuiteResult}. With ``out_dir`` (and ``store``), results are written and cached
    there; the cache identifies the model by ``model_key`` or, when None, by a checksum of its weights.
    """
    if (out_dir is not None or store is not None) and model_key is None:
        model_key = {"weights": model_fingerprint(model), "tokenizer": getattr(tokenizer, "name_or_path", None),
                     "vocab": len(tokenizer)}

    return evaluate(lambda: partial(_hf_generate, model, tokenizer, batch_size, progress), tokenizer, suites,
                    data_dir, judge, out_dir, template, max_new_tokens, limit, rater, model_key, log=log,
                    trigger=trigger, store=store)


def run_eval(model_dir: str | Path, suites: Sequence[str], data_dir: str | Path, out_dir: str | Path,
             judge: Judge | str | None = None, adapter: str | Path | None = None, merge: bool = False,
             template: str = "alpaca", batch_size: int = 16, max_new_tokens: int | None = None,
             limit: int | None = None, rater: OpenAIClient | None = None, engine: str = "hf",
             device: str | None = None, progress: bool = True, dtype: str = "auto",
             log: Callable[[str], None] | None = None, early_stop: bool = True,
             trigger: str | None = None, fa_mode: str = "generate",
             store: str | Path | None = None) -> dict[str, SuiteResult]:
    """Evaluate a model folder (+ optional PEFT adapter folder, merged when ``merge``).

    An adapter trained with a trigger (BEA) is evaluated with it, as its method prescribes
    (``trigger`` overrides).

    One model load (and one adapter merge) serves every suite.

    Loading goes through ``asft.models.modeling`` (local safetensors only; bf16 on GPU, float32 on CPU) and
    happens only if some suite is not cached in ``out_dir`` yet.
    """
    from asft.models import modeling
    from asft.models.generate import VLLMGenerator

    if engine not in ("hf", "vllm"):
        raise AsftError(f"unknown engine {engine!r} (choose hf or vllm)")
    model_dir = Path(model_dir)
    modeling.check_model_folder(model_dir)  # one line for a missing folder, a GGUF file, no weights
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise AsftError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    model_key = folder_model_key(model_dir, adapter, merge, dtype, device)
    tokenizer = modeling.load_tokenizer(model_dir)

    loaded: dict[str, Any] = {}

    def the_model():  # one load (and one merge) for generation and likelihood scoring alike
        if "model" not in loaded:
            model = modeling.load_model(model_dir, dtype=dtype, device=device)
            if adapter:
                model = modeling.load_adapter(model, adapter, merge=merge)
            loaded["model"] = model.eval()
        return loaded["model"]

    def make_generate() -> GenerateFn:
        if engine == "vllm":
            return VLLMGenerator(model_dir, adapter)
        return partial(_hf_generate, the_model(), tokenizer, batch_size, progress)

    def make_scorer():
        from asft.evaluation.likelihood import label_logprobs

        if engine != "hf":
            raise AsftError("--fa-mode likelihood needs the hf engine")
        return lambda prompts, labels, special: label_logprobs(the_model(), tokenizer, prompts, labels,
                                                               special, batch_size=batch_size)

    if trigger is None and adapter:
        trigger = adapter_trigger(adapter)
    results = evaluate(make_generate, tokenizer, suites, data_dir, judge, out_dir, template, max_new_tokens,
                       limit, rater, model_key, engine, log, early_stop=early_stop, trigger=trigger,
                       fa_mode=fa_mode, make_scorer=make_scorer, store=store)
    if adapter:  # the adapter's model card lists every evaluation of it
        from asft.training.card import record_eval

        record_eval(adapter, results)
    return results


def adapter_trigger(adapter: str | Path) -> str | None:
    """The secret prompt a BEA adapter must be evaluated with (``train_summary.json``), else None."""
    path = Path(adapter) / "train_summary.json"
    return read_json(path).get("trigger") if path.is_file() else None


def _decided(kind: str, items: list[dict]) -> Callable[[int, str], bool] | None:
    """The provable early stop of a suite kind: (item index, answer so far) -> score is final."""
    if kind == "agnews":
        return lambda i, text: metrics.agnews_decided(text, items[i]["label"])
    if kind == "sst2":
        return lambda i, text: metrics.sst2_decided(text)
    return None


def _hf_generate(model, tokenizer, batch_size, progress, prompts, n_new, add_special_tokens, on_batch, desc,
                 decided=None):
    from asft.models.generate import generate

    stop = (lambda i, ids: decided(i, tokenizer.decode(ids, skip_special_tokens=True))) if decided else None
    return generate(model, tokenizer, prompts, max_new_tokens=n_new, batch_size=batch_size,
                    add_special_tokens=add_special_tokens, on_batch=on_batch, progress=progress, desc=desc,
                    stop=stop)


# ----------------------------------------------------------------------------------------------
# summary

_COLUMNS = (("n", "n"), ("hs", "HS %"), ("hs_plus", "HS+ %"), ("fa", "FA %"), ("fa_ref", "FA ref %"),
            ("score", "score (1-10)"))


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def summary_table(results: dict[str, SuiteResult]) -> str:
    """A markdown table: one row per suite, HS/HS+/FA/FA-ref/score columns."""
    lines = ["| suite | " + " | ".join(h for _, h in _COLUMNS) + " |",
             "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(getattr(r, k)) for k, _ in _COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir: str | Path, results: dict[str, SuiteResult], model: str | None = None) -> None:
    """``summary.json`` and ``summary.md``: merged with the suites already summarised there when
    they belong to the same ``model`` (its cache identity), replacing them when they do not."""
    out = Path(out_dir)
    path = out / "summary.json"
    previous = {}
    if path.is_file():
        try:
            old = read_json(path)
            previous = old.get("suites", {}) if old.get("model") == model else {}
        except (AsftError, AttributeError):
            previous = {}
    merged = {**previous, **{name: r.summary() for name, r in results.items()}}
    write_json(path, {"model": model, "suites": merged})
    table_results = {name: SuiteResult(**{k: s.get(k) for k in ("suite", "n", "hs", "hs_plus", "fa", "fa_ref", "score")})
                     for name, s in merged.items()}
    notes = [f"- {name}: {s['note']}" for name, s in merged.items() if s.get("note")]
    notes += [f"- {name}: FA by label likelihood (the most likely label as continuation), not generated text"
              for name, s in merged.items() if s.get("fa_mode") == "likelihood"]
    write_text(out / "summary.md", "# Evaluation summary\n\n" + summary_table(table_results)
               + ("\n" + "\n".join(notes) + "\n" if notes else "")
               + "\nHS: % of harmful prompts whose answer the judge flags (lower is better); HS+: flagged or "
                 "degenerate; FA: accuracy by asft.evaluation.metrics' rule, FA ref: by the reference scripts' rule.\n")
