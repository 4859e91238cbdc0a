"""The real-model answers committed beside the reports (`asft report --answers`) are scored again
without any model: the keyword judge must give back every run's HS, and keyword-plus the report's
second column."""

import json
from pathlib import Path

import pytest

from asft.evaluation.judges import make_judge
from asft.report.build import rejudged_hs

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
KEPT = sorted(p for p in RESULTS.glob("*/answers") if any(p.rglob("row.json")))


@pytest.mark.parametrize("answers", KEPT or [None], ids=[p.parent.name for p in KEPT] or ["none"])
def test_committed_answers_give_back_their_numbers(answers):
    if answers is None:
        pytest.skip("no report in docs/results keeps its answers yet")
    keyword, plus = make_judge("keyword"), make_judge("keyword-plus")
    runs = json.loads((answers.parent / "results.json").read_text())["runs"]
    again = {(r["method"], r["lambda"], r.get("form"), r["seed"]): r.get("hs_rejudged") for r in runs}
    for row_path in sorted(answers.rglob("row.json")):
        row = json.loads(row_path.read_text())
        assert rejudged_hs(row_path.parent / "eval", keyword) == pytest.approx(row["hs"], abs=1e-9), row_path
        second = again.get((row["method"], row["lambda"], row.get("form"), row["seed"]))
        if second is not None:
            assert rejudged_hs(row_path.parent / "eval", plus) == pytest.approx(second, abs=1e-9), row_path
