"""asft: safety-preserving LoRA fine-tuning of aligned LLMs (AsFT, arXiv 2506.08473).

The public API, imported on first use (``import asft`` stays light, ``asft --help`` instant)::

    asft.build_anchor(base_dir, aligned_dir, out="anchor.safetensors")  # V = W_aligned - W_base
    anchor = asft.load_anchor("anchor.safetensors")
    penalty = asft.AsftPenalty.from_model(peft_model, anchor, lam=1.0)  # lam * sum ||(I - C) B A||_F^2
    trainer = asft.AsftTrainer(model=peft_model, args=..., train_dataset=..., penalty=penalty)
    asft.train(asft.TrainConfig(...))                                   # what `asft train` runs
    asft.evaluate.run_eval(...)                                         # the evaluation package
    asft.apply_threads()   # the CLI's thread policy (half the usable cores; $ASFT_THREADS): call it first

The library never changes torch's thread count by itself (no hidden global state); torch's default
of one thread per core ran a LoRA loop 7x slower on a busy 2-core machine
(``benchmarks/results/thread_policy.json``), so scripts call ``asft.apply_threads()`` once.

With TRL installed, ``asft.integrations.trl.AsftSFTTrainer`` is TRL's ``SFTTrainer`` with the penalty.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "build_anchor": "asft.models.anchor",
    "load_anchor": "asft.models.anchor",
    "AsftPenalty": "asft.methods.regularizer",
    "AsftTrainer": "asft.training.trainer",
    "TrainConfig": "asft.training.config",
    "train": "asft.training.train",
    "apply_threads": "asft.runtime",
}
__all__ = [*_LAZY, "evaluate", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "evaluate":  # the evaluation package (asft.evaluate.run_eval, ...)
        return importlib.import_module("asft.evaluation")
    if name in ("integrations", "methods", "models", "training", "evaluation", "experiments", "report", "toy"):
        return importlib.import_module(f"asft.{name}")
    raise AttributeError(f"module 'asft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
