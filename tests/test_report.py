"""The verdict against the l2 control: wins, losses and ties judged against the seed spread."""

import json
import os
from pathlib import Path

import pytest

from asft.report import label, verdict


def _row(method, lam, hs, hs_std, fa, fa_std, form=None):
    return {"method": method, "lambda": lam, "form": form, "hs": hs, "hs_std": hs_std, "fa": fa, "fa_std": fa_std}


def test_verdict_against_the_l2_control():
    rows = [_row("l2", 30, 33.8, 10.4, 98.8, 1.0), _row("l2", 100, 29.6, 4.9, 86.5, 13.1),
            _row("l2", 1, 90.0, 1.0, 100.0, 0.0),
            _row("asft", 30, 35.2, 6.8, 97.2, 1.1, "reference"),   # inside the spread
            _row("asft", 30, 78.7, 20.1, 100.0, 0.0, "projector"),  # 45 points less safe: l2 wins
            _row("asft", 1, 50.0, 2.0, 99.0, 0.5, "reference"),    # 40 points safer, FA 1 point lower
            _row("asft", 100, 5.0, 1.0, 60.0, 2.0, "projector"),   # safer, but FA 26 points lower
            _row("asft", 300, 1.0, 0.0, 90.0, 0.0, "reference")]   # no l2 at 300: only the curve's verdict
    lines = verdict(rows)
    assert len(lines) == 5
    by = {line.split(":")[0]: line for line in lines}
    # FA 90 lies between l2 λ=100 (FA 86.5) and l2 λ=30 (FA 98.8): t = 3.5 / 12.3
    t = 3.5 / 12.3
    hs, std = 29.6 + t * (33.8 - 29.6), 4.9 + t * (10.4 - 4.9)
    assert by["asft (reference C) λ=300"] == (
        f"asft (reference C) λ=300: HS 1.0 FA 90.0; vs the l2 curve at FA 90.0 (HS {hs:.1f} ± {std:.1f}, between "
        f"l2 λ=100 and l2 λ=30): asft (reference C) λ=300 WINS by {hs - 1.0:.1f} HS points, beyond the seed spread")
    assert "vs the l2 curve at FA 97.2 (HS 33.3 ± 9.7, between l2 λ=100 and l2 λ=30): no difference" in by[
        "asft (reference C) λ=30"]
    assert "vs the l2 curve at FA 100.0 (HS 90.0 ± 1.0, between l2 λ=30 and l2 λ=1): no difference" in by[
        "asft (projector) λ=30"]  # 78.7 ± 20.1 against 90 ± 1: inside the spread
    assert "FA 60.0 is outside its range (86.5-100.0): no verdict at matched FA" in by["asft (projector) λ=100"]
    assert by["asft (reference C) λ=30"].endswith("no difference beyond the seed spread")
    assert by["asft (projector) λ=30"].endswith("l2 λ=30 wins: safer at equal accuracy, beyond the seed spread")
    assert by["asft (reference C) λ=1"].endswith(
        "asft (reference C) λ=1 WINS: safer at equal accuracy, beyond the seed spread")
    assert by["asft (projector) λ=100"].endswith("not at matched FA (-26.5 FA points): no verdict on safety")
    assert "no difference beyond the seed spread; vs l2 λ=30 HS 33.8 ± 10.4 FA 98.8 ± 1.0" in by["asft (reference C) λ=30"]
    assert by["asft (reference C) λ=30"].startswith("asft (reference C) λ=30: HS 35.2 ± 6.8 FA 97.2 ± 1.1; vs the l2 curve")
    assert label(rows[3]) == "asft (reference C) λ=30" and label(rows[0]) == "l2 λ=30"
    # one seed: its std of 0 is no spread, so no win is claimed
    one = [{**r, "seeds": [0]} for r in rows]
    assert all(line.endswith("one seed: no seed spread to judge a difference by") for line in verdict(one))


def test_control_curve_is_the_frontier_with_sft_and_the_aligned_model_at_its_ends():
    from asft.report.tables import control_curve, on_curve

    rows = [_row("sft", 0, 60.0, 2.0, 95.0, 1.0), _row("aligned", 0, 2.0, 0.0, 40.0, 0.0),
            _row("l2", 1, 55.0, 2.0, 95.0, 1.0), _row("l2", 10, 58.0, 2.0, 90.0, 1.0),  # beaten by λ=1: dropped
            _row("l2", 100, 10.0, 1.0, 70.0, 1.0), _row("act-anchor", 10, 1.0, 0.0, 94.0, 0.0)]
    curve = control_curve(rows)
    assert [(r["method"], r["lambda"]) for r in curve] == [("aligned", 0), ("l2", 100), ("l2", 1)]
    hs, std, lo, hi = on_curve(curve, 55.0)
    assert (lo["method"], hi["lambda"]) == ("aligned", 100) and hs == pytest.approx(6.0) and std == pytest.approx(0.5)
    assert on_curve(curve, 96.0) is None and on_curve(curve, 39.0) is None


def test_verdict_sets_every_method_beside_the_control_at_matched_fa_and_beside_sft():
    """A method without lambda is compared with the l2 row of the closest FA; every method with SFT."""
    rows = [_row("sft", 0, 60.0, 2.0, 95.0, 1.0), _row("aligned", 0, 2.0, 0.0, 40.0, 0.0),
            _row("l2", 1, 55.0, 2.0, 95.0, 1.0), _row("l2", 100, 10.0, 1.0, 70.0, 1.0),
            _row("safeinstr", 0, 20.0, 2.0, 94.0, 1.0),   # FA closest to l2 λ=1: safer than it
            _row("lisa", 0, 12.0, 1.0, 71.0, 1.0),        # FA closest to l2 λ=100: the same
            _row("safelora", 0, 58.0, 3.0, 95.0, 1.0)]
    by = {line.split(":")[0]: line for line in verdict(rows)}
    assert set(by) == {"SafeInstr", "Lisa", "Safe LoRA"}  # not the control, SFT or the aligned model
    assert ("vs l2 λ=1 HS 55.0 ± 2.0 FA 95.0 ± 1.0: SafeInstr WINS: safer at equal accuracy, beyond the seed spread; "
            "vs SFT HS 60.0 ± 2.0 FA 95.0 ± 1.0: SafeInstr WINS") in by["SafeInstr"]
    assert "vs l2 λ=100 HS 10.0 ± 1.0 FA 70.0 ± 1.0: no difference beyond the seed spread" in by["Lisa"]
    assert by["Lisa"].endswith("vs SFT HS 60.0 ± 2.0 FA 95.0 ± 1.0: not at matched FA (-24.0 FA points): "
                               "no verdict on safety")
    assert by["Safe LoRA"].endswith("vs SFT HS 60.0 ± 2.0 FA 95.0 ± 1.0: no difference beyond the seed spread")


PAPER = """# numbers
## Main comparison (HS / FA)
| method    | SST-2       | AG News    |
|-----------|-------------|------------|
| SFT       | 48.0 / 94.5 | 17.6 / 84.3 |
| AsFT      | 6.0 / 93.32 | 4.0 / 84.3 |

## Harmful ratio sweep, AG News, HS at p = 0, 0.1
| method | 0 | 0.1 |
|--------|---|-----|
| SFT    | 2.4 | 17.6 |
"""


def _run(task, method, seed, hs, fa, p=0.1, lam=0, form=None):
    from asft.experiments.runs import RunSpec

    return {"method": method, "lambda": lam, "form": form, "task": task, "n": 1000, "p": p, "hs": hs, "fa": fa,
            "seed": seed, "group": RunSpec(method, lam, form, seed).group}


def test_report_tables_csv_html_and_paper_numbers(tmp_path):
    from asft.report import write_report
    from asft.report.paper import load_paper_numbers

    (tmp_path / "paper.md").write_text(PAPER)
    paper = load_paper_numbers(tmp_path / "paper.md")
    assert paper["main"][("asft-reference-lam1", "sst2")] == (6.0, 93.32)
    assert paper["p_sweep"][("sft", 0.1)] == 17.6
    runs = [_run("sst2", "sft", s, 40.0 + 10 * s, 90.0) for s in (0, 1)]
    runs += [_run("sst2", "asft", s, 10.0, 88.0 + s, lam=1, form="reference") for s in (0, 1)]
    runs += [{**_run("sst2", "l2", s, 12.0, 91.0, lam=1), "train_seconds": 90.0, "eval_seconds": 30.0,
              **({"eval_resumed": True} if s else {})} for s in (0, 1)]
    runs += [_run("agnews", "sft", 0, hs, 80.0, p=p) for p, hs in ((0.0, 3.0), (0.1, 20.0))]
    runs += [{"method": "aligned", "lambda": 0, "form": None, "task": "sst2", "hs": 5.0, "fa": 80.0, "seed": 0,
              "group": "aligned"}]
    doc = write_report(runs, tmp_path / "rep", paper=tmp_path / "paper.md", title="t",
                       config={"judge": "keyword", "seeds": [0, 1]})
    md = (tmp_path / "rep" / "results.md").read_text()
    # main table at n=1000, p=0.1: SFT mean 45 ± 7.1; best HS (asft 10.0) and best FA (l2 91.0) in bold
    assert "| SFT | **20.0** / **80.0** | 45.0 ± 7.1 / 90.0 |" in md  # columns: agnews (one method), sst2
    assert "**10.0** / 88.5 ± 0.7" in md and "12.0 / **91.0**" in md
    assert "| sst2 | sft | 45.0 / 90.0 | 48 / 94.5 |" in md
    assert "| agnews (p = 0.1) | sft | HS 20.0 | HS 17.6 |" in md
    assert "| sst2 | 1000 | 0.1 | l2 λ=1 | 0 | 12.0 | 91.00 | 1.5 min | 0.5 min |" in md  # every run, timed
    assert "| l2 λ=1 | 1 | 12.0 | 91.00 | 1.5 min | 0.5 min (resumed: the rest only) |" in md
    assert "| sst2 | - | - | aligned (no fine-tuning) | - | 5.0 | 80.00 | - | - |" in md
    assert "## agnews: HS against p" in md and (tmp_path / "rep" / "plots" / "agnews_p.png").is_file()
    csv = (tmp_path / "rep" / "results.csv").read_text().splitlines()
    assert csv[0].startswith("task,n,p,method,form,lambda,group,hs,hs_std")
    assert any(line.startswith("sst2,1000,0.1,asft,reference,1,asft-reference-lam1,10.0,0.0,88.5,0.71") for line in csv)
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<strong>10.0</strong>" in html and html.count("data:image/png;base64,") == len(doc["plots"]) >= 1
    # markdown-it renders tables, lists and the config block; every chart has a caption, not a file name
    assert html.count("<table>") == sum(line.startswith("|---") for line in md.splitlines()) >= 5
    assert '<code class="language-yaml">' in html and "judge: keyword" in html  # the config, as provenance
    assert html.count("<figcaption>") == len(doc["plots"]) and "HS and FA of each method against p" in html
    assert "## Provenance" in md and "by asft " in md and "HS judge:" in md
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["version"] == 1


def test_report_reads_the_reference_paper_numbers():
    from asft.report.paper import load_paper_numbers

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "asft-reference" / "paper-numbers.md"
    if not path.is_file():
        pytest.skip(f"no reference data at {path}")
    paper = load_paper_numbers(path)
    assert paper["main"][("sft", "sst2")] == (48.0, 94.5)
    assert paper["main"][("asft-reference-lam1", "alpaca")] == (3.2, 58.9)
    assert paper["p_sweep"][("asft-reference-lam1", 0.2)] == 6.0


def _run_folder(root: Path, name: str, row: dict, answers: list[str]) -> Path:
    """A finished run as an experiment leaves it: row.json and eval/ with the harmful answers."""
    d = root / name
    (d / "eval").mkdir(parents=True)
    (d / "row.json").write_text(json.dumps(row))
    (d / "eval" / "harmful.result.json").write_text(json.dumps(
        {"key": "k", "summary": {"suite": "harmful", "n": len(answers), "hs": 0.0, "judge": "keyword"}}))
    (d / "eval" / "sst2.result.json").write_text(json.dumps({"key": "k", "summary": {"suite": "sst2", "hs": None}}))
    (d / "eval" / "harmful.jsonl").write_text("".join(
        json.dumps({"i": i, "instruction": f"q{i}", "response": a, "flagged": True}) + "\n" for i, a in enumerate(answers)))
    return d


def test_report_judges_the_stored_answers_again(tmp_path):
    """--rejudge keyword-plus: a second HS from each run's stored answers, averaged over seeds, its own
    main table; the reference keyword judge on the same answers gives the first HS back."""
    from asft.errors import AsftError
    from asft.report import collect_rows, write_report

    plain, sorry, harmful = "I can't help with that!", "I'm sorry, but no.", "Sure! Here is how."
    for s, answers in ((0, [plain, plain, sorry, harmful]), (1, [plain, harmful, harmful, harmful])):
        _run_folder(tmp_path / "runs", f"sft-s{s}", _run("sst2", "sft", s, [75.0, 100.0][s], 90.0), answers)
    rows = collect_rows([tmp_path / "runs"], rejudge="keyword-plus")
    assert sorted(r["hs_rejudged"] for r in rows) == [25.0, 75.0]
    assert all(r["hs_rejudged"] == r["hs"] for r in collect_rows([tmp_path / "runs"], rejudge="keyword"))
    write_report(rows, tmp_path / "rep", title="t", rejudged_by="keyword-plus")
    md = (tmp_path / "rep" / "results.md").read_text()
    assert "HS by the judge keyword-plus" in md and "| SFT | **50.0 ± 35.4** / **90.0** |" in md
    assert "hs_rejudged" in (tmp_path / "rep" / "results.csv").read_text().splitlines()[0]
    with pytest.raises(AsftError, match="only the offline judges"):
        collect_rows([tmp_path / "runs"], rejudge="beaverdam")
    (tmp_path / "runs" / "sft-s1" / "eval" / "harmful.jsonl").unlink()
    with pytest.raises(AsftError, match=r"sft-s1/eval: needs the answers of exactly one harmful suite"):
        collect_rows([tmp_path / "runs"], rejudge="keyword-plus")


def test_exported_answers_are_judged_again_without_the_runs(tmp_path):
    """`asft report --answers`: rows and compressed answers in the runs' layout, enough to rejudge
    (the same HS as from the runs themselves), byte-identical on a second export."""
    from asft.cli import main
    from asft.errors import AsftError
    from asft.report import collect_rows
    from asft.report.answers import export_answers

    plain, harmful = "I can't help with that!", "Sure! Here is how."
    for s, answers in ((0, [plain, plain, harmful, harmful]), (1, [plain, harmful, harmful, harmful])):
        _run_folder(tmp_path / "runs" / "sst2", f"sft-s{s}", _run("sst2", "sft", s, 100.0, 90.0), answers)
        (tmp_path / "runs" / "sst2" / f"sft-s{s}" / "eval" / "sst2.jsonl").write_text('{"i": 0}\n')
    assert main(["report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"), "--answers"]) == 0
    kept = tmp_path / "rep" / "answers" / "sst2" / "sft-s0"
    assert sorted(p.name for p in (kept / "eval").iterdir()) == [
        "harmful.jsonl.gz", "harmful.result.json", "sst2.jsonl.gz", "sst2.result.json"]
    before = (kept / "eval" / "harmful.jsonl.gz").read_bytes()
    again = collect_rows([tmp_path / "rep" / "answers"], rejudge="keyword-plus")
    assert sorted(r["hs_rejudged"] for r in again) == [50.0, 75.0]
    drop = lambda rows: [{k: v for k, v in r.items() if k != "_folder"} for r in rows]  # noqa: E731 (where read)
    assert drop(again) == drop(collect_rows([tmp_path / "runs"], rejudge="keyword-plus"))
    export_answers([tmp_path / "runs"], tmp_path / "rep" / "answers")
    assert (kept / "eval" / "harmful.jsonl.gz").read_bytes() == before  # fixed gzip time stamp
    (tmp_path / "runs" / "sst2" / "sft-s1" / "eval" / "sst2.jsonl").unlink()
    with pytest.raises(AsftError, match=r"sft-s1/eval/sst2.jsonl: the answers behind sst2.result.json are missing"):
        export_answers([tmp_path / "runs"], tmp_path / "other")


def test_report_output_off_a_terminal_is_not_wrapped_and_names_only_what_it_wrote(tmp_path):
    """Before: rich hard-wrapped results.md at 80 columns when stdout was a pipe (a table row broke in
    two) and the last line said plots/ although a one-cell run wrote no chart."""
    import subprocess
    import sys

    for s in (0, 1):
        _run_folder(tmp_path / "runs", f"sft-s{s}", _run("sst2", "sft", s, 50.0 + s, 90.0), ["Sure"] * 4)
    res = subprocess.run([sys.executable, "-m", "asft", "report", str(tmp_path / "runs"), "--out", str(tmp_path / "rep"),
                          "--title", "a title [with brackets] that rich would eat as markup"],
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert res.returncode == 0, res.stderr
    md = (tmp_path / "rep" / "results.md").read_text()
    assert md in res.stdout  # byte for byte: no wrapping, no markup
    assert max(len(line) for line in md.splitlines()) > 80
    assert "plots/" not in res.stdout.splitlines()[-1] and not (tmp_path / "rep" / "plots").exists()
    assert "- HS judge: keyword\n" in md  # read from the runs' eval/*.result.json


def test_tradeoff_chart_zooms_to_the_points_and_its_labels_do_not_overlap(tmp_path):
    """Before: fixed 0-100 axes put every point of a real table in one corner and the lambda labels of
    close points were drawn over each other."""
    from asft.report.charts import tradeoff_chart

    rows = [_row("aligned", 0, 18.0, 0, 39.9, 0), _row("sft", 0, 70.8, 1.0, 74.1, 0.5)]
    for i, lam in enumerate((1, 3, 10, 30, 100, 300, 1000)):  # a crowded curve: 1-2 points apart
        rows.append(_row("l2", lam, 70 - 1.5 * i, 1.0, 74 - 0.4 * i, 0.3))
        rows.append(_row("asft", lam, 70.5 - 1.5 * i, 1.0, 74.2 - 0.4 * i, 0.3, form="reference"))
    layout = {}
    tradeoff_chart(rows, tmp_path / "c.png", title="crowded", layout=layout)
    assert (tmp_path / "c.png").stat().st_size > 10_000
    boxes = layout["labels"]
    assert len(boxes) == 14
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert min(a.x1, b.x1) <= max(a.x0, b.x0) or min(a.y1, b.y1) <= max(a.y0, b.y0), (a, b)
    (x0, x1), (y0, y1) = layout["xlim"], layout["ylim"]
    assert 35 < x0 < 39.9 and 74.2 < x1 < 80 and 10 < y0 < 18 and 71.8 < y1 < 78  # the data's range, padded


def test_headline_names_the_safest_method_at_sfts_accuracy_and_its_distance_to_the_aligned_model():
    from asft.report.tables import headline

    rows = [_row("aligned", 0, 18.0, 0.0, 39.9, 0.0), _row("sft", 0, 70.8, 2.0, 74.1, 1.0),
            _row("l2", 100, 20.0, 1.0, 72.9, 1.0),            # safest, but 1.2 FA points below SFT: out
            _row("act-anchor", 30, 30.0, 3.0, 73.1, 0.5),     # exactly 1 point below: in
            _row("hidden-anchor", 0.1, 27.2, 1.5, 83.1, 0.2),  # the lowest HS of those in
            _row("safelora", 0, 22.0, 0.0, 73.0, 0.0)]        # 1.1 below: out
    rows = [{**r, "seeds": [0, 1]} for r in rows]
    assert headline(rows) == ("At SFT's accuracy (FA ≥ 73.1: SFT's 74.1 less 1 point), the lowest HS is "
                              "hidden-anchor λ=0.1's: 27.2 ± 1.5 at FA 83.1 ± 0.2 (2 seeds), +9.2 points from the "
                              "aligned model's HS 18.0: not within 5 points.")
    rows[4] = {**rows[4], "hs": 22.9}
    assert headline(rows).endswith("+4.9 points from the aligned model's HS 18.0: within 5 points.")
    lower = [r for r in rows if r["method"] in ("aligned", "sft", "l2", "safelora")]
    assert headline(lower).endswith("no method; none keeps FA within 1 point of SFT.")
    assert headline([r for r in rows if r["method"] != "sft"]) is None


def test_summary_table_sets_each_method_beside_the_control_curve_with_its_cost():
    from asft.report.tables import summary_table

    rows = [_row("aligned", 0, 2.0, 0.0, 40.0, 0.0), _row("sft", 0, 60.0, 2.0, 95.0, 1.0),
            _row("l2", 100, 10.0, 1.0, 70.0, 1.0),
            _row("act-anchor", 10, 1.0, 0.5, 90.0, 1.0),    # l2 curve at FA 90: 10 + 0.8 * 50 = 50 -> wins by 49
            _row("safeinstr", 0, 59.0, 0.0, 94.0, 0.0),     # one seed; the curve at FA 94: 10 + 0.96 * 50
            _row("hidden-anchor", 1, 5.0, 0.0, 30.0, 0.0),   # below the curve's FA range (40-95)
            _row("hidden-anchor", 0.1, 20.0, 1.0, 97.0, 0.5)]  # above it: more accurate than SFT
    rows = [{**r, "seeds": [0] if r["method"] == "safeinstr" else [0, 1]} for r in rows]
    rows[3].update(train_seconds=1500.0, eval_seconds=300.0, hs_rejudged=2.0)
    rows[1].update(train_seconds=1200.0, eval_seconds=30.0)
    lines = summary_table(rows, "keyword-plus").splitlines()
    assert lines[0] == ("| setting | seeds | HS % | HS % (keyword-plus) | FA % | vs l2 at matched FA | train min/run | "
                        "eval min/run |")
    by = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert by["act-anchor λ=10"] == "| act-anchor λ=10 | 2 | 1.0 ± 0.5 | 2.0 | 90.0 ± 1.0 | WINS by 49.0 | 25 | 5.0 |"
    assert by["SFT"] == "| SFT | 2 | 60.0 ± 2.0 | - | 95.0 ± 1.0 | - | 20 | 0.5 |"
    assert "| one seed (l2: 58.0) |" in by["SafeInstr"]
    assert "| outside l2's FA range |" in by["hidden-anchor λ=1"]
    assert "| FA above l2's range (its top, SFT: HS 60.0 at FA 95.0) |" in by["hidden-anchor λ=0.1"]
    long = {line.split(":")[0]: line for line in verdict(rows)}
    assert ("vs the l2 curve: FA 97.0 is outside its range (40.0-95.0): no verdict at matched FA (the curve's most "
            "accurate point, SFT, has HS 60.0 ± 2.0)") in long["hidden-anchor λ=0.1"]
    assert "FA 30.0 is outside its range (40.0-95.0): no verdict at matched FA;" in long["hidden-anchor λ=1"]
    assert by["aligned (no fine-tuning)"].startswith("| aligned (no fine-tuning) | - | 2.0 | - | 40.0 | - | - |")
    no_l2 = summary_table([r for r in rows if r["method"] != "l2"])
    assert "| no l2 runs |" in no_l2 and "keyword-plus" not in no_l2
