"""``SuiteResult`` (the metrics of one suite and its per-item rows) and the summary files of an
evaluation folder (``summary.json``, ``summary.md``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asft.errors import AsftError
from asft.fileio import read_json, write_json, write_text


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
