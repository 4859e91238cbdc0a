"""`asft report`: tables, plots and an HTML page from finished runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from asft.evaluation.judges import judge_names

    p = sub.add_parser(
        "report", help="tables (md, csv, json), plots and one HTML page from folders of finished runs",
        description="Reads every row.json under the folders (e.g. an experiment's runs/), averages over "
                    "seeds and writes results.json, results.csv, results.md (the paper-shaped main "
                    "table per n and p, sweeps over p and n, AsFT against l2), plots/*.png and report.html.",
        epilog="example: asft report runs/toy-table/runs --out runs/toy-table "
               "--paper ../shared/data/asft-reference/paper-numbers.md")
    p.add_argument("dirs", nargs="+", help="folders holding finished runs")
    p.add_argument("--out", required=True, help="folder for the report files")
    p.add_argument("--paper", help="paper-numbers.md of the reference data: the paper's numbers beside ours")
    p.add_argument("--title", default="asft report", help="heading of results.md and report.html")
    p.add_argument("--rejudge", choices=judge_names(offline=True),
                   help="also judge every run's stored harmful answers with this offline judge: a second HS "
                        "table from the same generations (e.g. keyword-plus: refusals worded \"I can't help\" "
                        "are not counted harmful)")
    p.add_argument("--answers", action="store_true",
                   help="also keep every run's row and generated answers (gzip-compressed) in OUT/answers, in "
                        "the runs' layout: `asft report OUT/answers --rejudge JUDGE` scores them again "
                        "without the model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asft.cli import console as make_console, print_markdown

    from asft.report import collect_rows, write_report

    rows = collect_rows(args.dirs, rejudge=args.rejudge)
    console = make_console()
    doc = write_report(rows, args.out, paper=args.paper, title=args.title, rejudged_by=args.rejudge,
                       config={"runs": [str(Path(d).resolve()) for d in args.dirs]})  # provenance: the sources
    print_markdown((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    plots = f"plots/ ({len(doc['plots'])} charts), " if doc["plots"] else ""  # only when it wrote some
    console.print(f"{len(rows)} runs: results.json, results.csv, results.md, {plots}report.html in {args.out}")
    if args.answers:
        from asft.report.answers import ANSWERS, export_answers

        kept = export_answers(args.dirs, Path(args.out) / ANSWERS)
        console.print(f"the answers of {len(kept)} runs in {Path(args.out) / ANSWERS} "
                      f"(asft report {Path(args.out) / ANSWERS} --out DIR --rejudge JUDGE)")
    return 0
