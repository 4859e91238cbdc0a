"""``TrainConfig``: every option of ``asft train`` with the reference code's defaults.

Kept free of torch so that ``asft --help`` (which lists these options) starts instantly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asft.errors import AsftError
from asft.fileio import read_yaml
from asft.methods import DEFAULT_METHOD


def _opt(default: Any, help: str) -> Any:
    """A config field with its help text (shown by `asft train --help`)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


DASHBOARDS = {"tensorboard": "tensorboard", "wandb": "wandb", "none": None}  # name -> the package it needs


def check_dashboards(names) -> None:
    """``report_to`` names: known, and their package importable (one line otherwise)."""
    import importlib.util

    for name in names:
        if name not in DASHBOARDS:
            raise AsftError(f"report_to: unknown dashboard {name!r} (choose from {', '.join(DASHBOARDS)})")
        module = DASHBOARDS[name]
        if module and importlib.util.find_spec(module) is None:
            raise AsftError(f"report_to {name} needs the {module} package (pip install {module})")


@dataclass
class TrainConfig:
    """Every training option. Defaults are the public AsFT reference code's (Llama-2-7B-chat,
    LoRA r=8 alpha=32 dropout 0.05 on q_proj/v_proj, AdamW lr 5e-5, 10 epochs, batch 8,
    StepLR gamma 0.85 per epoch, max length 512, seed 42, lambda 1, reference form of C)."""

    model: str = _opt("", "aligned model folder (the model being fine-tuned)")
    data: str = _opt("", 'JSON/JSONL records {"instruction", "input"?, "output"}')
    out: str = _opt("", "output folder: adapter, config.yaml, train_log.jsonl")
    method: str = _opt(DEFAULT_METHOD, "a registered method (asft.methods; `asft train --help` lists them)")
    anchor: str | None = _opt(None, "anchor file from `asft anchor` (method asft)")
    form: str = _opt("reference", "C of the penalty: reference (V V^T/||V||_F, the public code's) | projector "
                      "(U_k U_k^T) | scaled (V V^T/sigma_max^2: largest eigenvalue 1)")
    lam: float = _opt(1.0, "penalty weight lambda")
    safety_data: str | None = _opt(None, "safety demonstrations (harmful request -> refusal): safeinstr, bea, "
                                   "lisa and the data anchors")
    safety_n: int | None = _opt(None, "methods with safety data: demonstrations added (safeinstr 100, bea 11), "
                                "alignment records used (lisa: all) or anchor records drawn (act/fisher/"
                                "nullspace 100, hidden/kl 32) by default")
    lisa_align_steps: int = _opt(100, "lisa: steps of each alignment state (the authors' scripts: 100)")
    lisa_finetune_steps: int = _opt(900, "lisa: steps of each fine-tuning state (the authors' scripts: 900)")
    lisa_rho: float = _opt(1.0, "lisa: weight rho of the proximal term rho/2 ||theta - theta_other||^2")
    anchor_batch: int = _opt(2, "hidden-anchor / kl-anchor: safety prompts per optimiser update (a rotating "
                             "subset of the --safety-n drawn)")
    anchor_layers: list[str] = _opt(["-1"], "hidden-anchor: hidden-state indices anchored (-1: the last, as SBR)")
    null_threshold: float = _opt(1e-2, "nullspace: input directions whose safety-data variance is below this "
                                 "fraction of the largest are the ones LoRA may use")
    proj_rank: int | None = _opt(None, "k: rank of the projector form, or of C for a rank-k anchor")
    proj_energy: float | None = _opt(None, "or: smallest k that holds this fraction of ||V||_F^2")
    scale_by_lora: bool = _opt(False, "penalise the applied update (alpha/r) B A instead of B A")
    targets: list[str] = _opt(["q_proj", "v_proj"], "module names that get LoRA adapters")
    lora_r: int = _opt(8, "LoRA rank")
    lora_alpha: int = _opt(32, "LoRA alpha")
    lora_dropout: float = _opt(0.05, "LoRA dropout")
    lr: float = _opt(5e-5, "AdamW learning rate")
    epochs: float = _opt(10, "training epochs")
    max_steps: int | None = _opt(None, "stop after this many optimiser updates (overrides --epochs)")
    batch_size: int = _opt(8, "per-device batch size")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    lr_gamma: float = _opt(0.85, "StepLR: the learning rate is multiplied by this after every epoch")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    max_length: int = _opt(512, "examples are truncated to this many tokens")
    group_by_length: bool = _opt(False, "batch examples of similar length (less padding, faster on CPU; "
                                 "another batch order, so other numbers than the reference's)")
    template: str = _opt("alpaca", "prompt format: alpaca | llama2 | chat (the tokenizer's)")
    seed: int = _opt(42, "random seed")
    dtype: str = _opt("auto", "auto (bf16 on CUDA, else float32) | float32 | bfloat16 | float16")
    gradient_checkpointing: bool = _opt(False, "trade compute for memory")
    fsdp: bool = _opt(False, "shard the model, LoRA weights included, with FSDP2 across the processes torchrun / "
                             "accelerate launch started (methods that support it: asft train --help)")
    logging_steps: int = _opt(10, "log task loss and penalty every N updates")
    save_steps: int = _opt(0, "checkpoint every N updates, for --resume (0: none)")
    resume: bool = _opt(False, "resume from the last checkpoint in OUT/checkpoints")
    limit: int | None = _opt(None, "train on the first N records only")
    overwrite: bool = _opt(False, "replace an adapter already in OUT")
    progress: bool = _opt(True, "show a progress bar")
    report_to: list[str] = _opt([], "dashboards to log to besides train_log.jsonl: tensorboard (OUT/tensorboard), "
                                    "wandb, none")

    def validate(self) -> None:
        from asft.methods import get_method

        get_method(self.method).validate(self)
        check_dashboards(self.report_to)
        if self.lam < 0 or not math.isfinite(self.lam):
            raise AsftError(f"lambda must be a finite number >= 0, got {self.lam}")
        if self.max_steps is not None and self.max_steps < 1:
            raise AsftError(f"max_steps must be >= 1, got {self.max_steps}")
        for key in ("lora_r", "batch_size", "grad_accum", "max_length", "anchor_batch"):
            if getattr(self, key) < 1:
                raise AsftError(f"{key} must be >= 1, got {getattr(self, key)}")
        # checked here, before any file is written or a model loaded (torch's AdamW would refuse some
        # only after config, log and checkpoints exist; others would train silently on nothing)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise AsftError(f"lr must be a finite number > 0, got {self.lr}")
        if self.max_steps is None and not (math.isfinite(self.epochs) and self.epochs > 0):
            raise AsftError(f"epochs must be a finite number > 0, got {self.epochs} (or give --max-steps)")
        if not (math.isfinite(self.lr_gamma) and 0 < self.lr_gamma <= 1):
            raise AsftError(f"lr_gamma must be in (0, 1] (1: a constant learning rate), got {self.lr_gamma}")
        for key in ("weight_decay", "lora_dropout"):
            v = getattr(self, key)
            if not (math.isfinite(v) and v >= 0):
                raise AsftError(f"{key} must be a finite number >= 0, got {v}")
        if self.lora_dropout >= 1:
            raise AsftError(f"lora_dropout must be < 1, got {self.lora_dropout}")
        if self.save_steps < 0:
            raise AsftError(f"save_steps must be >= 0 (0: no checkpoints), got {self.save_steps}")
        if self.limit is not None and self.limit < 1:
            raise AsftError(f"limit must be >= 1 (the first N records), got {self.limit}")
        if self.logging_steps < 1:
            raise AsftError(f"logging_steps must be >= 1, got {self.logging_steps}")

    @property
    def penalty_form(self) -> str | None:
        """The form of C the method's penalty uses (None without a penalty)."""
        from asft.methods import get_method

        return get_method(self.method).penalty_form(self)

    PATHS = ("model", "data", "out", "anchor", "safety_data")  # relative to the YAML file that names them

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Options from a YAML file, then ``overrides`` (from flags; None means "not given"). Relative
        paths in the file are relative to the file's folder (as in an experiment config), so a config
        works from any working folder; flags stay relative to the working folder. ``~`` is expanded.
        The file may use the Hugging Face names of ``ALIASES`` (``learning_rate``, ``output_dir``, ...)."""
        raw = options(read_yaml(path), str(path))
        for name in cls.PATHS:
            if isinstance(raw.get(name), str) and raw[name]:
                value = Path(raw[name]).expanduser()
                raw[name] = str(value if value.is_absolute() else Path(path).parent / value)
        raw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**raw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The names Hugging Face's TrainingArguments, PEFT's LoraConfig, TRL and LLaMA-Factory / axolotl give these
# options: accepted wherever an option is named (a config file, KEY=VALUE, flags), so a config copied
# from those tools needs no renaming.
ALIASES = {
    "model_name_or_path": "model", "train_file": "data", "output_dir": "out",
    "learning_rate": "lr", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length", "lr_decay": "lr_gamma",
    "r": "lora_r", "lora_rank": "lora_r", "target_modules": "targets", "lora_target": "targets",
    "overwrite_output_dir": "overwrite",
}


def canonical(key: str, where: str) -> str:
    """The option a name means: ``learning-rate`` / ``learning_rate`` / ``lr`` -> ``lr`` (one line otherwise)."""
    key = key.strip().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in TrainConfig.__dataclass_fields__:
        import difflib

        close = difflib.get_close_matches(key, [*TrainConfig.__dataclass_fields__, *ALIASES], n=1)
        raise AsftError(f"{where}: unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return key


def options(raw: dict, where: str) -> dict:
    """A mapping of option names (ours or ``ALIASES``) to values, as TrainConfig's fields and types.
    A name given twice under two spellings is refused, not resolved by order."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = canonical(str(key), where)
        if name in out:
            raise AsftError(f"{where}: option {name!r} is given twice (as {key!r} and under another name)")
        f = TrainConfig.__dataclass_fields__[name]
        out[name] = None if value is None else _coerce(value, f, where)
    return out


def parse_assignments(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lam=10", "train.lr=1e-4", "seeds=[0, 1]"]`` -> ``{"lam": 10, "train.lr": 1e-4, ...}``. A value
    is read as YAML (numbers, booleans, lists, mappings; anything else a string); keys keep their dots."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise AsftError(f"expected KEY=VALUE, got {item!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text  # e.g. "a: b: c" as a plain string
        if key.strip() in out:
            raise AsftError(f"{key.strip()}=... is given twice")
        out[key.strip()] = value
    return out


def _coerce(value: Any, f: dataclasses.Field, path: str | Path) -> Any:
    """A YAML value as the field's type. YAML reads ``5e-5`` (no dot) as a string, and a user may
    write ``targets: q_proj,v_proj``: both are taken; anything else wrong is refused by name."""
    kind = str(f.type).split(" ")[0]
    try:
        if kind == "list[str]":
            return [t for t in value.split(",") if t] if isinstance(value, str) else [str(t) for t in value]
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return value if isinstance(value, int) else float(value)  # 2 stays 2: run keys hash it as written
        return str(value)
    except (TypeError, ValueError):
        raise AsftError(f"{path}: option {f.name!r} should be {kind}, got {value!r}") from None
