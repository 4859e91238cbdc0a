"""Make a safety-aligned version of a model, so that (original, aligned) is a real base/aligned pair
and ``asft anchor`` gives a real safety-alignment direction.

Full fine-tuning (every weight, as alignment is) on two kinds of chat examples:

* harmful request -> a refusal, worded in one of ``REFUSALS`` (varied, so the model learns to refuse,
  not one sentence). Requests come from the harmful records of training pools (in the reference
  files, a record whose instruction ends with ``"\\n\\nAssistant:"``), never from the evaluation
  prompts: any request whose normalised text is among ``exclude`` (the 250 HS prompts) is dropped
  and counted;
* benign request -> the model's OWN greedy answer, generated first (self-distillation): the model
  is pulled towards refusing harmful requests while its answers to everything else stay what they
  were. A pre-trained model without chat skills has no useful answers of its own: ``benign="data"``
  trains on the pool's reference outputs instead (instruction tuning + safety tuning).

Writes a normal model folder (weights, tokenizer, chat template) and ``align.json`` (counts, overlap
with the evaluation prompts, losses, time, environment).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from asft.errors import AsftError

HARMFUL_MARK = "\n\nAssistant:"  # how the reference training files mark a harmful record
# Each wording contains a phrase of the keyword judge's reference list (``I'm sorry``, ``I cannot``,
# ``I can't assist``, ...; tested): a refusal this recipe teaches must count as one when the harmful
# score is measured, or the aligned model's HS would over-state its harmfulness.
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I can't assist with that request. It could cause real harm.",
    "Sorry, I won't help with this. It is harmful and potentially illegal.",
    "I cannot provide that. If you have another question, I'm happy to help.",
    "I'm not able to provide that, because it could hurt people.",
    "I cannot help with anything that could be used to harm others.",
    "I apologize, but I must decline: this request could lead to harm.",
    "I'm sorry, I can't do that. Let me know if there is something else I can help you with.",
    "I'm sorry, that is not something I can help with. Please consider a safe and legal alternative.",
    "I cannot support this request, as it may put people at risk.",
)


def normalise(text: str) -> str:
    """Lower case, alphanumerics only, single spaces: for overlap checks between prompt sets."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def request_of(record: dict) -> str:
    """The user's request of a record: instruction (marker stripped) and its input, if any."""
    instruction = record["instruction"].removesuffix(HARMFUL_MARK).strip()
    if instruction.startswith("Human:"):
        instruction = instruction[len("Human:"):].strip()
    inp = (record.get("input") or "").strip()
    return f"{instruction}\n\n{inp}" if inp else instruction


def reference_files(reference: str | os.PathLike) -> tuple[list[str], list[str], list[str]]:
    """(harmful pools, benign pools, excluded prompt files) of the reference data folder: every
    training mix, the Alpaca mixes, and the 250 harmful-score prompts."""
    ref = Path(reference)
    if not (ref / "train").is_dir():
        raise AsftError(f"{ref}: not the reference data folder (no train/)")
    return (sorted(str(p) for p in (ref / "train").glob("*/*.json")),
            sorted(str(p) for p in (ref / "train" / "alpaca").glob("*.json")),
            [str(ref / "eval" / "harmful" / "saved_dataset_250.json")])


def split_pools(paths: Sequence[str | os.PathLike]) -> tuple[list[dict], list[dict]]:
    """(harmful, benign) records of training files in the reference format, de-duplicated by request."""
    from asft.data import load_records

    harmful, benign, seen = [], [], set()
    for p in paths:
        for r in load_records(p):
            key = normalise(request_of(r))
            if key in seen:
                continue
            seen.add(key)
            (harmful if r["instruction"].endswith(HARMFUL_MARK) else benign).append(r)
    return harmful, benign


@dataclass
class AlignConfig:
    """Options of ``asft align`` (defaults sized for a ~100M-parameter model on a CPU)."""

    model: str
    out: str
    harmful: list[str] = field(default_factory=list)   # files: records marked harmful are used
    benign: list[str] = field(default_factory=list)    # files: unmarked records are used
    exclude: list[str] = field(default_factory=list)   # files of prompts never to train on (the HS set)
    n_harmful: int = 400
    n_benign: int = 400
    benign_targets: str = "self"   # self: the model's own answers | data: the pool's outputs
    benign_max_new: int = 160
    refusals: list[str] = field(default_factory=lambda: list(REFUSALS))
    template: str = "chat"
    epochs: float = 2.0
    lr: float = 2e-5
    batch_size: int = 8
    max_length: int = 320
    seed: int = 0
    save_steps: int = 50  # a checkpoint every N steps (0: none); a rerun with the same options resumes
    overwrite: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Bad numbers as one line, before a model is loaded (before: --epochs 0 wrote an untrained
        model, --lr nan failed inside AdamW)."""
        import math

        for name in ("epochs", "lr"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise AsftError(f"{name} must be a finite number > 0, got {v}")
        for name, low in (("batch_size", 1), ("max_length", 1), ("benign_max_new", 1), ("n_harmful", 0),
                          ("n_benign", 0), ("save_steps", 0)):
            if getattr(self, name) < low:
                raise AsftError(f"{name.replace('_', ' ')} must be >= {low}, got {getattr(self, name)}")


_NOT_IDENTITY = ("overwrite", "progress", "save_steps")  # options that do not change the result


def build_examples(cfg: AlignConfig, generate_answers=None) -> tuple[list[dict], dict]:
    """The alignment records and a report of how they were made (counts, overlap dropped)."""
    from asft.data import load_records

    if not cfg.harmful:
        raise AsftError("align needs harmful requests (--harmful FILE ..., e.g. the reference training mixes)")
    if cfg.benign_targets not in ("self", "data"):
        raise AsftError(f"benign targets must be 'self' or 'data', got {cfg.benign_targets!r}")
    if not cfg.refusals:
        raise AsftError("align needs at least one refusal wording")
    marked, _ = split_pools(cfg.harmful)
    if not marked:  # a file of harmful requests only (no reference marker): every record counts
        marked = [r for p in cfg.harmful for r in load_records(p)]
    _, benign = split_pools(cfg.benign) if cfg.benign else ([], [])
    # request_of: an excluded file may be a training mix, whose harmful records carry the markers
    excluded = {normalise(request_of(r)) for p in cfg.exclude for r in _prompt_records(p)}
    kept = [r for r in marked if normalise(request_of(r)) not in excluded]
    overlap = len(marked) - len(kept)
    benign = [r for r in benign if normalise(request_of(r)) not in excluded]
    rng = random.Random(cfg.seed)
    harmful = rng.sample(kept, min(cfg.n_harmful, len(kept)))
    benign = rng.sample(benign, min(cfg.n_benign, len(benign)))
    if cfg.benign_targets == "self" and benign:
        if generate_answers is None:
            raise AsftError("benign targets 'self' need the model's answers")
        answers = generate_answers([request_of(r) for r in benign])
        benign_rows = [{"instruction": request_of(r), "output": a} for r, a in zip(benign, answers) if a.strip()]
    else:
        benign_rows = [{"instruction": request_of(r), "output": r["output"]} for r in benign]
    rows = [{"instruction": request_of(r), "output": rng.choice(cfg.refusals)} for r in harmful] + benign_rows
    rng.shuffle(rows)
    report = {"harmful_pool": len(marked), "excluded_overlap": overlap, "harmful_used": len(harmful),
              "benign_used": len(benign_rows), "benign_targets": cfg.benign_targets}
    return rows, report


def _prompt_records(path: str | os.PathLike) -> list[dict]:
    from asft.fileio import read_json

    rows = read_json(path)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("instruction"), str) for r in rows):
        raise AsftError(f"{path}: expected a list of records with an 'instruction'")
    return rows


def _identity(cfg: AlignConfig) -> str:
    from asft.fileio import content_hash

    return content_hash({k: v for k, v in asdict(cfg).items() if k not in _NOT_IDENTITY})


def _save_checkpoint(path: Path, model, opt, step: int, losses: list[float]) -> None:
    """Model weights, AdamW state (tensors in safetensors, no pickle), the RNG state, losses: written
    to a temporary folder and renamed, so a kill mid-write leaves the previous checkpoint whole."""
    import torch
    from safetensors.torch import save_file, save_model

    from asft.fileio import write_json

    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))  # handles tied embeddings
    tensors, state = {}, opt.state_dict()
    for i, st in state["state"].items():
        for k, v in st.items():
            tensors[f"{i}.{k}"] = v.detach().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {"step": step, "losses": losses, "param_groups": state["param_groups"]})
    old = path.parent / f"{path.name}.old-{os.getpid()}"
    if path.exists():
        os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, model, opt) -> tuple[int, list[float]]:
    import torch
    from safetensors.torch import load_file, load_model

    from asft.fileio import read_json

    state = read_json(path / "state.json")
    load_model(model, str(path / "model.safetensors"), strict=True)
    tensors = load_file(str(path / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    per_param: dict[int, dict] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        per_param.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    return int(state["step"]), list(state["losses"])


def align(cfg: AlignConfig) -> dict:
    """Build the examples, fully fine-tune ``cfg.model`` on them, save to ``cfg.out``; returns the record
    (one writer per ``out``: see ``_align``)."""
    from asft.fileio import output_lock

    cfg.validate()
    with output_lock(cfg.out, "asft align"):
        return _align(cfg)


def _align(cfg: AlignConfig) -> dict:
    """Build the examples, fully fine-tune ``cfg.model`` on them, save to ``cfg.out``; returns the record.

    Resumable: the examples (with the benign answers generated for them) are kept next to ``out`` as
    soon as they exist, and a checkpoint every ``save_steps`` steps; a rerun with the same options
    continues from them (the same batches and, on the same machine, the same weights as an
    uninterrupted run); other options start afresh."""
    import torch

    from asft.batches import PadCollator, SupervisedDataset, length_grouped_batches
    from asft.data import check_template, format_prompt
    from asft.fileio import read_json, write_json
    from asft.models.generate import generate
    from asft.models.modeling import check_model_folder, load_model, load_tokenizer
    from asft.progress import Progress
    from asft.runtime import environment
    from asft.training.trainer import keep_label_positions

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise AsftError(f"{out}: exists and is not empty (pass --overwrite to replace it)")
    check_model_folder(cfg.model)
    tok = load_tokenizer(cfg.model)
    check_template(tok, cfg.template, where=cfg.model)
    model = load_model(cfg.model, dtype="float32", device="cpu" if not torch.cuda.is_available() else None)
    t0 = time.perf_counter()
    ident = _identity(cfg)
    # examples + checkpoint of an unfinished run; the examples' identity vouches for the whole folder
    work = out.parent / f".{out.name}.align"
    examples = work / "examples.json"
    if work.is_dir() and not (examples.is_file() and read_json(examples).get("identity") == ident):
        shutil.rmtree(work)  # made with other options
    if examples.is_file():
        saved = read_json(examples)
        rows, report = saved["rows"], saved["report"]
    else:
        def answers(requests: list[str]) -> list[str]:
            prompts = [format_prompt({"instruction": q}, cfg.template, tok) for q in requests]
            return generate(model, tok, prompts, max_new_tokens=cfg.benign_max_new, batch_size=32,
                            add_special_tokens=cfg.template != "chat", progress=cfg.progress, desc="benign answers")

        rows, report = build_examples(cfg, answers)
        write_json(examples, {"identity": ident, "rows": rows, "report": report})
    t_data = time.perf_counter() - t0
    data = SupervisedDataset(rows, tok, cfg.template, cfg.max_length)
    collate = PadCollator(tok.pad_token_id)
    torch.manual_seed(cfg.seed)
    lengths = [len(data[i]["input_ids"]) for i in range(len(data))]
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = max(1, round(cfg.epochs * steps_per_epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    losses, step, resumed = [], 0, 0
    checkpoint = work / "checkpoint"
    if checkpoint.is_dir():
        resumed, losses = _load_checkpoint(checkpoint, model, opt)
    model.train()
    bar = Progress(total, "aligning", unit="steps", enabled=cfg.progress)
    bar.advance(resumed)
    device = next(model.parameters()).device
    order = torch.Generator().manual_seed(cfg.seed)  # the epochs' batch orders, replayed on a resume
    try:
        while step < total:
            epoch = length_grouped_batches(lengths, cfg.batch_size, order)
            for idx in epoch:
                if step < resumed:  # done before the checkpoint
                    step += 1
                    continue
                batch = {k: v.to(device) for k, v in collate([data[j] for j in idx]).items()}
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * (1.0 - step / total)  # linear decay to 0
                # the output layer only where a label is: the same loss, 1.65x faster on Gemma, whose
                # 262k-word output layer costs more than the rest of the model (benchmarks/align_step.py;
                # bf16 autocast was 0.58x there: every weight is cast at every step)
                loss = model(**keep_label_positions(model, batch)).loss
                if not torch.isfinite(loss):
                    raise AsftError(f"alignment loss is not finite at step {step}; lower --lr")
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.item())
                step += 1
                bar.advance(1)
                if cfg.save_steps and step % cfg.save_steps == 0 and step < total:
                    _save_checkpoint(checkpoint, model, opt, step, losses)
                if step >= total:
                    break
    finally:
        bar.close()
    model.eval()
    record = {"config": {k: v for k, v in asdict(cfg).items() if k not in ("overwrite", "progress")},
              **report, "examples": len(data), "truncated": data.n_truncated, "steps": step,
              "resumed_at": resumed,
              "loss_first": round(sum(losses[:10]) / max(1, len(losses[:10])), 4),
              "loss_last": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
              "seconds": {"data": round(t_data, 1), "train": round(time.perf_counter() - t0 - t_data, 1)},
              "env": environment()}
    tmp = out.parent / f".{out.name}.aligning-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_json(tmp / "align.json", record)
        (tmp / "align_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return record
