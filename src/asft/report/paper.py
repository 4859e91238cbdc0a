"""The paper's published numbers (``paper-numbers.md`` of the reference data) beside ours.

Only where the setting matches: the paper's main table is Llama-2-7B-chat, lambda 1, n = 1000,
p = 0.1, BeaverDam judge; we match on task, method (SFT, Safe LoRA, AsFT with the reference C at
lambda 1), n and p, and say that the model and judge differ when they do.
"""

from __future__ import annotations

import re
from pathlib import Path

from asft.errors import AsftError
from asft.fileio import read_text
from asft.report.tables import markdown_cells

TASKS = {"SST-2": "sst2", "AG News": "agnews", "GSM8K": "gsm8k", "Alpaca": "alpaca"}
PAPER_LAMBDA = 1.0  # the paper's tables: lambda 1, the default form of C


def paper_groups() -> dict[str, str]:
    """The paper's row names -> our run groups (methods with a ``paper_name``, at the paper's lambda)."""
    from asft.methods import all_methods

    return {m.paper_name: m.group(PAPER_LAMBDA if m.takes_lambda else 0.0) for m in all_methods() if m.paper_name}
MAIN = dict(n=1000, p=0.1)


def _table_after(text: str, heading: str, path) -> list[list[str]]:
    """The cells of the first markdown table under the heading that starts with ``heading``."""
    m = re.search(rf"^##\s*{re.escape(heading)}.*?$", text, re.MULTILINE)
    if not m:
        raise AsftError(f"{path}: no section '## {heading}'")
    rows = []
    for line in text[m.end():].lstrip("\n").splitlines():
        if not line.startswith("|"):
            break
        cells = markdown_cells(line)
        if cells is not None:
            rows.append(cells)
    if len(rows) < 2:
        raise AsftError(f"{path}: the table under '## {heading}' is empty")
    return rows


def load_paper_numbers(path: str | Path) -> dict:
    """``{"main": {(group, task): (hs, fa)}, "p_sweep": {(group, p): hs}}`` (AG News sweep)."""
    text = read_text(path)
    out: dict = {"main": {}, "p_sweep": {}, "file": str(path)}
    groups = paper_groups()
    head, *body = _table_after(text, "Main comparison", path)
    for cells in body:
        group = groups.get(cells[0])
        for name, cell in zip(head[1:], cells[1:]):
            m = re.fullmatch(r"([\d.]+)\s*/\s*([\d.]+)", cell)
            if group and name in TASKS and m:
                out["main"][(group, TASKS[name])] = (float(m.group(1)), float(m.group(2)))
    head, *body = _table_after(text, "Harmful ratio sweep", path)
    for cells in body:
        group = groups.get(cells[0])
        for p, cell in zip(head[1:], cells[1:]):
            if group:
                out["p_sweep"][(group, float(p))] = float(cell)
    if not out["main"]:
        raise AsftError(f"{path}: no numbers read from the main comparison table")
    return out


def paper_beside(rows: list[dict], paper: dict) -> str:
    """A markdown table of our numbers next to the paper's wherever task, method, n and p match;
    empty when nothing matches (e.g. the toy world's tasks)."""
    lines = []
    for r in rows:
        key = (r["group"], r["task"])
        if key in paper["main"] and (r.get("n"), r.get("p")) == (MAIN["n"], MAIN["p"]):
            hs, fa = paper["main"][key]
            lines.append(f"| {r['task']} | {r['group']} | {r['hs']:.1f} / {r['fa'] if r['fa'] is None else round(r['fa'], 1)} "
                         f"| {hs:g} / {fa:g} |")
        if r["task"] == "agnews" and r.get("n") == MAIN["n"] and (r["group"], r.get("p")) in paper["p_sweep"]:
            lines.append(f"| agnews (p = {r['p']:g}) | {r['group']} | HS {r['hs']:.1f} | "
                         f"HS {paper['p_sweep'][(r['group'], r['p'])]:g} |")
    if not lines:
        return ""
    return ("| task | method | ours HS / FA | paper HS / FA (Llama-2-7B-chat, BeaverDam) |\n|---|---|---|---|\n"
            + "\n".join(lines) + "\n")
