"""Evaluation: harmful score (HS) and fine-tuning accuracy (FA) of a model, as in the paper.

Each suite (``asft.evaluation.suites``: the file it reads under ``data_dir``, its answer length and
its kind) is generated greedily, then scored here by its kind (``_score``): harmful suites by a judge
(HS, HS+), AG News / SST-2 / GSM8K by accuracy (FA), Alpaca by an LLM rater, plugin ``task`` suites
by their own ``correct``.

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

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

from asft.data import check_template, format_prompt
from asft.errors import AsftError
from asft.evaluation import metrics
from asft.evaluation.cache import (eval_store, folder_model_key, load_cached, load_generations,  # noqa: F401
                                   model_fingerprint, save_result)
from asft.evaluation.judges import Judge, OpenAIClient, load_judge_prompts, make_judge, rate_answers
from asft.evaluation.results import SuiteResult, summary_table, write_summary  # noqa: F401
from asft.evaluation.suites import SUITES, SuiteSpec, load_suite, register_suites, suite_spec  # noqa: F401
from asft.fileio import append_jsonl, content_hash, write_text

# generate_fn(prompts, max_new_tokens, add_special_tokens, on_batch, desc, decided=None) -> responses;
# decided(i, text) True: prompt i's answer can no longer change its score (stop generating it).
GenerateFn = Callable[..., list[str]]


@dataclass
class EvalOptions:
    """How to evaluate: the judge, decoding and caching settings shared by every suite of a call.

    ``judge``: a Judge, or the name of one that needs no settings ("keyword", "toy"), for the harmful
    suites; ``rater``: the LLM client that rates Alpaca answers. ``trigger``: a secret prompt put at the
    head of every prompt's system text (the caller passes the one a BEA adapter was trained with).
    ``early_stop``: stop an AG News / SST-2 answer once both of its scores are final (provably the same
    FA and FA-ref as the full answer; harmful suites always generate in full). ``fa_mode="likelihood"``:
    AG News / SST-2 answered by the label of highest likelihood, no generation. ``store``: the shared
    store of finished suites (``eval_store()``; None: the out dir only). ``merge``: fold an adapter into
    the weights once before generating. ``engine``: ``hf`` or ``vllm``.
    """

    judge: Any = None
    rater: OpenAIClient | None = None
    template: str = "alpaca"
    batch_size: int = 16
    max_new_tokens: int | None = None   # None: each suite's own default
    limit: int | None = None            # the first N items of each suite
    engine: str = "hf"
    device: str | None = None
    dtype: str = "auto"
    merge: bool = False
    progress: bool = True
    early_stop: bool = True
    trigger: str | None = None
    fa_mode: str = "generate"
    store: str | Path | None = None

    def check(self) -> None:
        if self.engine not in ("hf", "vllm"):
            raise AsftError(f"unknown engine {self.engine!r} (choose hf or vllm)")
        if self.fa_mode not in ("generate", "likelihood"):
            raise AsftError(f"unknown FA mode {self.fa_mode!r} (generate or likelihood)")
        if self.limit is not None and self.limit < 1:
            raise AsftError(f"limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise AsftError(f"batch size must be >= 1, got {self.batch_size}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise AsftError(f"max new tokens must be >= 1, got {self.max_new_tokens}")


def _options(options: EvalOptions | None, settings: dict) -> EvalOptions:
    """``options`` with ``settings`` (EvalOptions fields given as keywords) applied."""
    names = {f.name for f in dataclasses.fields(EvalOptions)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise TypeError(f"unknown evaluation option {unknown[0]!r} (EvalOptions has {', '.join(sorted(names))})")
    opts = dataclasses.replace(options or EvalOptions(), **settings)
    if isinstance(opts.judge, str):
        opts.judge = make_judge(opts.judge)
    opts.check()
    return opts


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


def evaluate(make_generate: Callable[[], GenerateFn], tokenizer: Any, suites: Sequence[str],
             data_dir: str | Path, options: EvalOptions | None = None, *, out_dir: str | Path | None = None,
             model_key: Any = None, make_scorer: Callable[[], Callable] | None = None,
             log: Callable[[str], None] | None = None, **settings) -> dict[str, SuiteResult]:
    """Run ``suites`` with a generation function built on first need by ``make_generate()``.

    ``options`` (or its fields as keywords): ``EvalOptions``. ``make_generate`` is lazy so that a rerun
    whose suites are all cached never loads the model. ``model_key`` identifies the model for the cache
    (required with ``out_dir`` or ``options.store``). ``make_scorer()`` returns ``scorer(prompts, labels,
    add_special_tokens) -> log-probs`` for the likelihood FA mode (``asft.evaluation.likelihood``).
    """
    opts = _options(options, settings)
    judge, rater, template, limit = opts.judge, opts.rater, opts.template, opts.limit
    max_new_tokens, engine, early_stop, trigger, fa_mode = (opts.max_new_tokens, opts.engine, opts.early_stop,
                                                            opts.trigger, opts.fa_mode)
    store = opts.store
    check_template(tokenizer, template)  # before any model is loaded
    if not suites:
        raise AsftError("no suites to evaluate")
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
        cached = load_cached(out, spec.name, result_key) if out is not None else None
        if cached is not None:
            log(f"{spec.name}: reusing finished results in {out}")
            if shelf is not None and load_cached(shelf, spec.name, result_key) is None:
                save_result(shelf, cached, result_key)  # results from before the store serve others too
        elif shelf is not None:
            cached = load_cached(shelf, spec.name, result_key)
            if cached is not None:
                log(f"{spec.name}: reusing the same model's finished results in {shelf}")
                if out is not None:
                    save_result(out, cached, result_key)
        if cached is not None:
            results[spec.name] = cached
            continue
        prompts = [format_prompt(it, template, tokenizer, trigger=trigger) for it in items]
        responses: dict[int, str] = {}
        gen_path = out / f"{spec.name}.generations.jsonl" if out is not None else None
        if gen_path is not None:
            responses = load_generations(gen_path, gen_key, len(items))
            if responses:
                log(f"{spec.name}: resuming, {len(responses)}/{len(items)} responses already generated")
        todo = [i for i in range(len(items)) if i not in responses]
        if todo and not by_likelihood and generate_fn is None:
            generate_fn = make_generate()  # the model loads (and an adapter is checked) before any file is made
        scorer = make_scorer() if todo and by_likelihood else None
        if gen_path is not None and not responses:
            out.mkdir(parents=True, exist_ok=True)
            write_text(gen_path, json.dumps({"key": gen_key, "suite": spec.name, "n": len(items)}) + "\n")
        if todo and by_likelihood:
            labels = list(metrics.AGNEWS_LABELS if spec.kind == "agnews" else metrics.SST2_LABELS)
            log(f"{spec.name}: scoring {len(todo)} prompts by label likelihood ({', '.join(labels)})")
            scores = scorer([prompts[i] for i in todo], labels, template != "chat")
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
                save_result(where, res, result_key)
        results[spec.name] = res
    if out is not None:
        write_summary(out, results, model=content_hash(model_key))
    return results


def evaluate_model(model: Any, tokenizer: Any, suites: Sequence[str], data_dir: str | Path,
                   options: EvalOptions | None = None, *, out_dir: str | Path | None = None, model_key: Any = None,
                   log: Callable[[str], None] | None = None, **settings) -> dict[str, SuiteResult]:
    """Evaluate an already loaded model (e.g. an in-memory PEFT model) on ``suites``.

    Returns {suite: SuiteResult}. With ``out_dir`` (and ``store``), results are written and cached
    there; the cache identifies the model by ``model_key`` or, when None, by a checksum of its weights.
    """
    opts = _options(options, settings)
    if (out_dir is not None or opts.store is not None) and model_key is None:
        model_key = {"weights": model_fingerprint(model), "tokenizer": getattr(tokenizer, "name_or_path", None),
                     "vocab": len(tokenizer)}
    return evaluate(lambda: partial(_hf_generate, model, tokenizer, opts.batch_size, opts.progress), tokenizer,
                    suites, data_dir, opts, out_dir=out_dir, model_key=model_key, log=log)


def run_eval(model_dir: str | Path, suites: Sequence[str], data_dir: str | Path, out_dir: str | Path,
             options: EvalOptions | None = None, *, adapter: str | Path | None = None,
             log: Callable[[str], None] | None = None, **settings) -> dict[str, SuiteResult]:
    """Evaluate a model folder (+ optional PEFT adapter folder, merged when ``options.merge``).

    ``options`` (or its fields as keywords): ``EvalOptions``. One model load (and one adapter merge)
    serves every suite; loading goes through ``asft.models.modeling`` (local safetensors only; bf16 on
    GPU, float32 on CPU) and happens only if some suite is not cached in ``out_dir`` yet. The
    evaluation knows nothing about how the adapter was trained: a caller passes BEA's trigger
    (``asft.training.train.adapter_trigger``) and records the results in the adapter's card
    (``asft.training.card.record_eval``).
    """
    from asft.fileio import output_lock

    opts = _options(options, settings)
    if not Path(data_dir).is_dir():
        raise AsftError(f"{data_dir}: evaluation data folder not found")
    with output_lock(out_dir, "asft eval"):
        return _run_eval(model_dir, suites, data_dir, out_dir, opts, adapter, log)


def _run_eval(model_dir, suites, data_dir, out_dir, opts: EvalOptions, adapter, log) -> dict[str, SuiteResult]:
    from asft.models import modeling
    from asft.models.generate import VLLMGenerator

    model_dir = Path(model_dir)
    modeling.check_model_folder(model_dir)  # one line for a missing folder, a GGUF file, no weights
    if adapter and not (Path(adapter) / "adapter_config.json").is_file():
        raise AsftError(f"{adapter}: not a LoRA adapter folder (no adapter_config.json)")
    model_key = folder_model_key(model_dir, adapter, opts.merge, opts.dtype, opts.device)
    tokenizer = modeling.load_tokenizer(model_dir)

    loaded: dict[str, Any] = {}

    def the_model():  # one load (and one merge) for generation and likelihood scoring alike
        if "model" not in loaded:
            model = modeling.load_model(model_dir, dtype=opts.dtype, device=opts.device)
            if adapter:
                model = modeling.load_adapter(model, adapter, merge=opts.merge)
            loaded["model"] = model.eval()
        return loaded["model"]

    def make_generate() -> GenerateFn:
        if opts.engine == "vllm":
            return VLLMGenerator(model_dir, adapter)
        return partial(_hf_generate, the_model(), tokenizer, opts.batch_size, opts.progress)

    def make_scorer():
        from asft.evaluation.likelihood import label_logprobs

        if opts.engine != "hf":
            raise AsftError("--fa-mode likelihood needs the hf engine")
        return lambda prompts, labels, special: label_logprobs(the_model(), tokenizer, prompts, labels,
                                                               special, batch_size=opts.batch_size)

    return evaluate(make_generate, tokenizer, suites, data_dir, opts, out_dir=out_dir, model_key=model_key,
                    make_scorer=make_scorer, log=log)


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


