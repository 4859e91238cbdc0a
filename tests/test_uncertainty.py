"""Standard errors over prompts and paired bootstrap intervals (asft.report.uncertainty), against their
reference definitions on small inputs, and in a report beside the verdicts."""

import json
import math
import random
import statistics

import pytest

from asft.report.uncertainty import paired_interval, standard_error


def test_standard_error_is_lm_evals_for_one_seed_and_shrinks_with_seeds():
    scores = [1] * 30 + [0] * 70
    # lm-eval's mean_stderr: the sample standard deviation over items / sqrt(n)
    ref = statistics.stdev(scores) / math.sqrt(len(scores))
    assert standard_error([scores]) == pytest.approx(100 * ref, abs=0.005)
    # k seeds of the same spread: the error of their mean is 1/sqrt(k) of one seed's
    assert standard_error([scores] * 4) == pytest.approx(100 * ref / 2, abs=0.005)
    assert standard_error([[1]]) is None  # one item: no spread


def test_paired_interval_matches_the_normal_approximation_and_uses_the_pairing():
    rng = random.Random(0)
    n = 400
    b = [int(rng.random() < 0.5) for _ in range(n)]
    a = [x if rng.random() < 0.85 else 1 - x for x in b]  # a agrees with b on ~85% of the prompts
    lo, hi = paired_interval([a], [b])
    d = [x - y for x, y in zip(a, b)]
    mean, se = statistics.fmean(d), statistics.stdev(d) / math.sqrt(n)
    assert lo == pytest.approx(100 * (mean - 1.96 * se), abs=1.0)
    assert hi == pytest.approx(100 * (mean + 1.96 * se), abs=1.0)
    # unpaired (b's prompts shuffled) the same two means have a wider interval: the pairing is used
    shuffled = b[:]
    rng.shuffle(shuffled)
    lo2, hi2 = paired_interval([a], [shuffled])
    assert hi2 - lo2 > 1.5 * (hi - lo)
    assert paired_interval([a], [a]) == (0.0, 0.0)
    assert paired_interval([a], [b[:-1]]) is None  # other prompts: not paired
    assert paired_interval([a], [b]) == (lo, hi)  # a fixed generator: the same interval every time
    # a point between two settings (the l2 curve's interpolation) is their weighted mix
    mix = paired_interval([a], [[b], [a]], weights_b=[0.5, 0.5])
    half = paired_interval([a], [b])
    assert mix[0] == pytest.approx(half[0] / 2, abs=0.6) and mix[1] == pytest.approx(half[1] / 2, abs=0.6)


def test_report_shows_standard_errors_and_intervals_and_refuses_the_keyword_judge_on_toy_answers(tmp_path):
    from asft.errors import AsftError
    from asft.report import collect_rows, write_report

    def run(name, method, seed, flags, correct, lam=0):
        d = tmp_path / "runs" / name
        (d / "eval").mkdir(parents=True)
        row = {"method": method, "lambda": lam, "form": None, "task": "sst2", "n": 100, "p": 0.1, "seed": seed,
               "group": method if not lam else f"{method}-lam{lam:g}", "hs": 100 * statistics.fmean(flags),
               "fa": 100 * statistics.fmean(correct)}
        (d / "row.json").write_text(json.dumps(row))
        for suite, key, values in (("harmful", "flagged", flags), ("sst2", "correct", correct)):
            (d / "eval" / f"{suite}.result.json").write_text(json.dumps({"summary": {
                "suite": suite, "hs": row["hs"] if suite == "harmful" else None,
                "fa": row["fa"] if suite == "sst2" else None}}))
            (d / "eval" / f"{suite}.jsonl").write_text("".join(json.dumps(
                {"i": i, "instruction": f"q{i}", "response": "Sure" if v else "No", key: bool(v)}) + "\n"
                for i, v in enumerate(values)))

    rng = random.Random(1)
    for s in (0, 1):  # asft answers the task exactly as l2 does: at l2's FA, on the control's curve
        task = [int(rng.random() < 0.9) for _ in range(60)]
        run(f"sft-s{s}", "sft", s, [int(rng.random() < 0.8) for _ in range(50)], [1] * 60)
        run(f"l2-s{s}", "l2", s, [int(rng.random() < 0.4) for _ in range(50)], task, 10)
        run(f"asft-s{s}", "asft", s, [int(rng.random() < 0.35) for _ in range(50)], task, 10)
    rows = collect_rows([tmp_path / "runs"])
    doc = write_report(rows, tmp_path / "rep", title="t")
    md = (tmp_path / "rep" / "results.md").read_text()
    sft = next(r for r in doc["rows"] if r["method"] == "sft")
    assert "items" not in sft and "items" not in doc["runs"][0]  # per-prompt lists stay out of results.json
    assert sft["hs_se"] == standard_error([r["items"]["hs"] for r in rows if r["method"] == "sft"])
    assert f"| SFT | {sft['hs']:.1f} | {sft['hs_se']:.2f} |" in md
    line = next(x for x in md.splitlines() if x.startswith("- asft (reference C) λ=10: vs the l2 curve"))
    assert "vs l2 λ=10: HS" in line and "vs SFT: HS" in line and "FA +0.0 [+0.0, +0.0]" in line
    assert "hs_se" in (tmp_path / "rep" / "results.csv").read_text().splitlines()[0]

    # the toy world's answers are not English: the keyword judges cannot read them
    import asft.toy  # noqa: F401  (registers the toy suites)

    toy = tmp_path / "toy" / "sft-s0"
    (toy / "eval").mkdir(parents=True)
    (toy / "row.json").write_text(json.dumps({"method": "sft", "task": "topic", "hs": 50.0, "group": "sft", "seed": 0,
                                              "lambda": 0, "fa": 90.0}))
    (toy / "eval" / "toy-harmful.result.json").write_text(json.dumps({"summary": {"suite": "toy-harmful", "hs": 50.0}}))
    (toy / "eval" / "toy-harmful.jsonl").write_text(json.dumps({"i": 0, "instruction": "a", "response": "b"}) + "\n")
    with pytest.raises(AsftError, match="toy-harmful answers can only be judged by the toy judge"):
        collect_rows([tmp_path / "toy"], rejudge="keyword-plus")
