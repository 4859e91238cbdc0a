"""Evaluation: harmful score (HS) and fine-tuning accuracy (FA) of a model (``asft eval``).

``suites``   what each suite reads and how it is scored (``SuiteSpec``, ``register_suites``)
``run``      ``run_eval`` (a model folder), ``evaluate_model`` (a loaded model), ``EvalOptions``
``cache``    generation checkpoints, finished results, the shared store (``eval_store``)
``results``  ``SuiteResult``, ``summary.json`` / ``summary.md``
``judges``   safety judges, one module each, and their registry (``make_judge``, ``register_judge``)
``metrics``, ``likelihood``: answer parsing and label-likelihood scoring

Names are imported on first use (``asft.evaluation.run_eval``; ``asft.evaluate`` is this package),
so the CLI can read the suite and judge registries without loading torch.
"""

from __future__ import annotations

import importlib

_LAZY = {"EvalOptions": "run", "evaluate": "run", "evaluate_model": "run", "run_eval": "run", "_score": "run",
         "SuiteSpec": "suites", "SUITES": "suites", "register_suites": "suites", "suite_spec": "suites",
         "suite_names": "suites", "load_suite": "suites", "SuiteResult": "results", "summary_table": "results",
         "write_summary": "results", "eval_store": "cache", "folder_model_key": "cache",
         "model_fingerprint": "cache", "load_generations": "cache"}
__all__ = [n for n in _LAZY if not n.startswith("_")]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"asft.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'asft.evaluation' has no attribute {name!r}")
