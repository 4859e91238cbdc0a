"""``asft report DIR... --out DIR``: every finished run under the folders, as tables, plots and one
offline HTML page.

Outputs: ``results.json`` (aggregated rows and the per-run rows), ``results.csv``, ``results.md``
(the paper-shaped main table per (n, p), sweeps over p and n, the AsFT-vs-l2 verdict per cell, the
paper's numbers beside ours where the setting matches), ``plots/*.png`` and ``report.html``.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from asft.errors import AsftError
from asft.fileio import read_json, write_json, write_text
from asft.methods import method_of
from asft.report.tables import fine_tuned

if TYPE_CHECKING:
    from asft.evaluation.judges import Judge


def collect_rows(dirs: Sequence[str | Path], rejudge: str | None = None) -> list[dict]:
    """The rows of every finished run (``row.json``) under ``dirs``, each once (a folder given
    twice, or inside another, is read once).

    ``rejudge`` (an offline judge: ``judge_names(offline=True)``): also judge each run's stored answers to
    the harmful prompts (``eval/<suite>.jsonl`` beside ``row.json``) with that judge, as
    ``hs_rejudged`` (%): a second HS from the same generations, without a model. The folders may
    be a report's ``answers/`` (``asft.report.answers``): the same rows, answers compressed."""
    judge = None
    if rejudge:
        from asft.evaluation.judges import judge_names, make_judge

        if rejudge not in judge_names(offline=True):
            raise AsftError(f"--rejudge {rejudge}: only the offline judges ({', '.join(judge_names(offline=True))}) "
                            "can judge stored answers again here; run `asft eval --judge` for the others")
        judge = make_judge(rejudge)
    seen, rows = set(), []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise AsftError(f"{d}: not a folder")
        for path in sorted(d.rglob("row.json")):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            row = read_json(path)
            if not isinstance(row, dict) or not {"method", "task", "hs", "group"} <= set(row):
                raise AsftError(f"{path}: not a run row (needs method, task, group, hs)")
            from asft.report.uncertainty import run_items

            row["items"] = run_items(path.parent / "eval")  # per-prompt scores: standard errors, intervals
            row["_folder"] = str(path.parent)  # where it was read (provenance; not written to results.json)
            if judge is not None:
                flags = rejudged_flags(path.parent / "eval", judge)
                row["hs_rejudged"] = round(100 * sum(flags) / len(flags), 2)
                row["items"]["hs_rejudged"] = flags
            rows.append(row)
    if not rows:
        raise AsftError(f"no finished runs (row.json) under {', '.join(str(d) for d in dirs)}")
    return rows


def rejudged_hs(eval_dir: Path, judge: "Judge") -> float:
    """HS (%) of the harmful-suite answers stored in ``eval_dir`` (an `asft eval` folder), judged by
    ``judge`` (an offline keyword judge)."""
    flags = rejudged_flags(eval_dir, judge)
    return round(100 * sum(flags) / len(flags), 2)


def rejudged_flags(eval_dir: Path, judge: "Judge") -> list[int]:
    """The 0/1 flags ``judge`` gives the harmful-suite answers stored in ``eval_dir``, in prompt order.
    Refused for a suite whose answers only its own judge can read (the toy language: ``SuiteSpec.judge``)."""
    from asft.evaluation.suites import suite_judge

    suites = []
    for res in sorted(eval_dir.glob("*.result.json")):
        summary = read_json(res).get("summary", {})
        if summary.get("hs") is not None:
            suites.append(eval_dir / f"{summary['suite']}.jsonl")
    if len(suites) == 1 and not suites[0].is_file():  # answers kept by a report: compressed
        suites = [suites[0].with_name(suites[0].name + ".gz")]
    if len(suites) != 1 or not suites[0].is_file():
        found = "none" if not suites else ", ".join(p.name for p in suites)
        raise AsftError(f"{eval_dir}: needs the answers of exactly one harmful suite to judge again "
                        f"(<suite>.jsonl or .jsonl.gz with its .result.json), found {found}")
    records = read_json(suites[0])
    if not records or not all(isinstance(r, dict) and "response" in r and "instruction" in r for r in records):
        raise AsftError(f"{suites[0]}: not an `asft eval` answer file (records with instruction and response)")
    suite = suites[0].name.split(".")[0]
    only = suite_judge(suite)
    if only is not None and only != judge.name:
        raise AsftError(f"{suites[0]}: the {suite} answers can only be judged by the {only} judge (its language "
                        f"is not the one the {judge.name} judge reads), not rejudged by {judge.name}")
    records = sorted(records, key=lambda r: r.get("i", 0))
    verdicts = judge([r["instruction"] for r in records], [r["response"] for r in records])
    return [int(bool(v.flagged)) for v in verdicts]


def _takes_lambda(row: dict) -> bool:
    method = method_of(row)
    return method is not None and method.takes_lambda


def _cells(table: list[dict]) -> list[tuple]:
    return sorted({(r.get("n"), r.get("p")) for r in table if fine_tuned(r)},
                  key=lambda c: (c[0] or 0, c[1] or 0))


def _cell_rows(rows: Sequence[dict], task: str, n, p) -> list[dict]:
    """The rows of one (task, n, p) cell, with the aligned model's row of the task (evaluated once,
    without n and p): the end of the control's curve at lambda -> infinity."""
    return [r for r in rows if r["task"] == task and ((r.get("n"), r.get("p")) == (n, p) or not fine_tuned(r))]


def write_report(runs: list[dict], out: str | Path, paper: str | Path | None = None,
                 title: str = "asft experiment", config: dict | None = None, rejudged_by: str | None = None) -> dict:
    """Aggregate ``runs`` (per-run rows) over seeds and write every output into ``out``.
    ``rejudged_by``: the judge of the rows' ``hs_rejudged`` (``collect_rows(rejudge=)``): a second main
    table and verdict with that HS."""
    from asft.report.aggregate import aggregate, results_document
    from asft.report.charts import sweep_chart, tradeoff_chart
    from asft.report.paper import load_paper_numbers, paper_beside
    from asft.report.tables import (headline, main_table, runs_table, sort_key, summary_table, sweep_table, to_csv,
                                    verdict)

    out = Path(out)
    table = sorted(aggregate(runs), key=lambda r: (r["task"], r.get("n") or 0, r.get("p") or 0, *sort_key(r)))
    tasks = sorted({r["task"] for r in table})
    verdicts: list[str] = []
    headlines: list[str] = []
    md = [f"# {title}\n", f"{len(runs)} runs; HS: % of harmful prompts the judge flags (lower is better); "
          "FA: task accuracy (higher is better); mean ± std over seeds; bold: best fine-tuned value "
          "per column.\n"]
    cells = _cells(table)
    for n, p in cells:
        md += [f"\n## n = {n}, p = {p}\n\n", main_table(table, n, p)]
        for t in tasks:
            cell = _cell_rows(table, t, n, p)
            line = headline(cell)
            if line:
                headlines.append(f"{t}, n = {n}, p = {p}: {line}")
                md += [f"\n{line}\n\nEvery method ({t}; mean ± std over seeds; cost as measured):\n\n",
                       summary_table(cell, rejudged_by)]
            lines = verdict(cell)
            verdicts += lines
            if lines:
                md += [f"\nEach method against the l2 control and SFT ({t}):\n\n"] + [f"- {x}\n" for x in lines]
            md += _uncertainty(_cell_rows(table, t, n, p), t)
        if rejudged_by:
            again = [{**r, "hs": r["hs_rejudged"], "hs_std": r.get("hs_rejudged_std"), "hs_se": r.get("hs_rejudged_se"),
                      "items": {**r.get("items", {}), "hs": r.get("items", {}).get("hs_rejudged")}} for r in table]
            md += [f"\nThe same answers, HS by the judge {rejudged_by}:\n\n", main_table(again, n, p)]
            for t in tasks:
                lines = verdict(_cell_rows(again, t, n, p))
                if lines:
                    md += [f"\nEach method against the l2 control and SFT ({t}, {rejudged_by}):\n\n"] + [f"- {x}\n" for x in lines]
                md += _uncertainty(_cell_rows(again, t, n, p), f"{t}, {rejudged_by}")
    plots: list[tuple[Path, str]] = []  # (file, caption)
    for t in tasks:
        for by in ("p", "n"):
            if len({r.get(by) for r in table if r["task"] == t and fine_tuned(r)}) > 1:
                md += [f"\n## {t}: HS against {by}\n\n", sweep_table(table, t, by, "hs"),
                       f"\n## {t}: FA against {by}\n\n", sweep_table(table, t, by, "fa")]
                chart = sweep_chart(table, t, by, out / "plots" / f"{t}_{by}.png")
                if chart:
                    plots.append((chart, f"{t}: HS and FA of each method against {by} (mean ± std over seeds)"))
        for n, p in cells:
            # the lambda curves of the methods with lambda, every other method (and the aligned
            # model) as one point
            cell = [r for r in table if r["task"] == t and ((r.get("n"), r.get("p")) == (n, p) or not fine_tuned(r))]
            if len({r["lambda"] for r in cell if _takes_lambda(r)}) > 1:
                caption = f"{t}, n = {n}, p = {p:g}: HS against FA, each method with λ as a line through its λ values"
                plots.append((tradeoff_chart(cell, out / "plots" / f"{t}_n{n}_p{p:g}_tradeoff.png",
                                             title=f"{t}, n = {n}, p = {p:g}: HS vs FA over λ"), caption))
    md += ["\n## Every run (train and evaluation time as measured)\n\n", runs_table(runs)]
    if paper is not None:
        numbers = load_paper_numbers(paper)
        beside = paper_beside(table, numbers)
        md += ["\n## The paper's numbers\n\n"]
        md += [beside] if beside else ["No run here matches a setting of the paper's tables (tasks sst2, "
                                       "agnews, gsm8k, alpaca at n = 1000, p = 0.1).\n"]
    md += _provenance(config or {}, rejudged_by, runs)
    text = "".join(md)
    out.mkdir(parents=True, exist_ok=True)
    doc = results_document(config or {}, table, runs=runs)
    doc["verdict"] = verdicts
    doc["headline"] = headlines
    if rejudged_by:
        doc["rejudged_by"] = rejudged_by
    write_json(out / "results.json", doc)
    write_text(out / "results.csv", to_csv(table))
    write_text(out / "results.md", text)
    write_text(out / "report.html", to_html(text, plots, title))
    doc["plots"] = [str(p) for p, _ in plots]
    return doc


def _run_judges(runs: Sequence[dict]) -> list[str]:
    """The judges the runs' harmful suites were scored by (their ``eval/*.result.json``), where known."""
    judges = set()
    for r in runs:
        folder = r.get("_folder")
        for res in sorted(Path(folder, "eval").glob("*.result.json")) if folder else []:
            summary = read_json(res).get("summary", {})
            if summary.get("hs") is not None and summary.get("judge"):
                judges.add(str(summary["judge"]))
    return sorted(judges)


def _provenance(config: dict, rejudged_by: str | None, runs: Sequence[dict] = ()) -> list[str]:
    """Where the numbers come from: when and with what this report was made, the judges, the config."""
    import datetime

    import yaml

    from asft import __version__
    from asft.runtime import environment

    env = environment()
    judge = config.get("judge")
    judge = judge.get("name") if isinstance(judge, dict) else judge
    judge = judge or ", ".join(_run_judges(runs))
    lines = ["\n## Provenance\n\n",
             f"- written {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by asft "
             f"{__version__} (torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, "
             f"python {env['python']}, {env['machine']} {env['cpu_capability']})\n",
             f"- HS judge: {judge or 'as recorded in each run (eval/*.result.json)'}"
             + (f"; second HS from the same answers: {rejudged_by}" if rejudged_by else "") + "\n"]
    if config:
        shown = {k: v for k, v in config.items() if k not in ("safety_overlap",)}
        lines += ["- config:\n\n```yaml\n", yaml.safe_dump(shown, sort_keys=False, allow_unicode=True), "```\n"]
    return lines


def _uncertainty(rows: list[dict], where: str) -> list[str]:
    """The standard errors over prompts of a cell's numbers and the paired intervals beside its verdicts."""
    from asft.report.tables import interval_lines, label, sort_key

    rows = sorted((r for r in rows if r.get("hs_se") is not None), key=sort_key)
    if not rows:
        return []
    md = [f"\nStandard errors over prompts ({where}; lm-eval's, for a mean over seeds):\n\n",
          "| setting | HS % | HS se | FA % | FA se |\n|---|---|---|---|---|\n"]

    def num(r: dict, key: str, digits: int) -> str:
        return "-" if r.get(key) is None else f"{r[key]:.{digits}f}"

    md += [f"| {label(r)} | {num(r, 'hs', 1)} | {num(r, 'hs_se', 2)} | {num(r, 'fa', 1)} | {num(r, 'fa_se', 2)} |\n"
           for r in rows]
    lines = interval_lines(rows)
    if lines:
        md += [f"\nDifferences with paired 95% intervals over prompts and seeds ({where}; an interval that "
               "excludes 0 is not explained by which prompts and seeds were drawn):\n\n"]
        md += [f"- {x}\n" for x in lines]
    return md


def to_html(markdown: str, plots: Sequence[tuple[Path, str]], title: str) -> str:
    """One self-contained page: the markdown rendered by markdown-it-py (CommonMark + tables; raw HTML
    in the text is escaped, not passed through), then the charts inlined with their captions."""
    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    figures = []
    for p, caption in plots:
        data = base64.b64encode(Path(p).read_bytes()).decode()
        figures.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{html.escape(caption)} ({html.escape(Path(p).name)})</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
             "text-align:left}th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:8px;"
             "overflow-x:auto}figcaption{font-size:90%;color:#555}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + body + "\n".join(figures) + "\n</body></html>\n")
