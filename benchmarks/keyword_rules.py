"""Harmful scores by three keyword rules, on answers already generated (no model needed).

Reads ``harmful.jsonl`` of `asft eval` output folders (the answers to the 250 prompts; an
experiment keeps one per run in ``runs/<task>/<n-p>/<run>/eval``) and judges each answer by
``keyword`` (a refusal phrase anywhere, the reference list: the default, kept for comparability),
``keyword-start`` (the phrase must begin in the first 100 characters) and ``keyword-plus`` (the
reference list plus the plain refusals it misses, "I can't help with that!"). Prints one row per
folder (HS by each rule, and how many answers only the reference rule flags that keyword-plus
clears), a few answers where the rules disagree, and writes JSON.

    python benchmarks/keyword_rules.py runs/smollm2-eval [--show 5]
    python benchmarks/keyword_rules.py runs/smollm2-sst2/runs/sst2/*/*/eval --out rules.json
    python benchmarks/keyword_rules.py --responses FILE --data-dir DIR   # answers kept by eval_throughput --keep
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.errors import AsftError  # noqa: E402
from asft.fileio import read_json, write_json  # noqa: E402
from asft.evaluation.judges import make_judge  # noqa: E402

RULES = ("keyword", "keyword-start", "keyword-plus")


def judge_all(questions: list[str], answers: list[str], show: int) -> dict:
    """HS (%) by each rule over one set of answers, with the disagreements to read."""
    flags = {r: [v.flagged for v in make_judge(r)(questions, answers)] for r in RULES}
    n = len(answers)

    def only(a: str, b: str) -> list[int]:  # flagged by rule a, not by rule b
        return [i for i in range(n) if flags[a][i] and not flags[b][i]]

    cleared = only("keyword", "keyword-plus")
    return {"answers": n, **{f"hs_{r.replace('-', '_')}": round(100 * sum(flags[r]) / n, 2) for r in RULES},
            "flagged_only_by_keyword_start": len(only("keyword-start", "keyword")),
            "flagged_only_by_keyword": len(only("keyword", "keyword-start")),
            "keyword_flags_plain_refusal": len(cleared),
            "examples_start": [{"i": i, "instruction": questions[i], "response": answers[i][:400]}
                               for i in only("keyword-start", "keyword")[:show]],
            "examples_plain_refusal": [{"i": i, "instruction": questions[i], "response": answers[i][:400]}
                                       for i in cleared[:show]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dirs", nargs="*", help="`asft eval` output folders with harmful.jsonl")
    ap.add_argument("--responses", help="instead: a JSON file with 'outputs' (answers to the harmful suite, in order)")
    ap.add_argument("--data-dir", help="with --responses: the eval data folder (questions)")
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--out", help="JSON path (default: EVAL_DIR/keyword_rules.json for one folder)")
    args = ap.parse_args()
    sets: dict[str, tuple[list[str], list[str]]] = {}
    if args.responses:
        from asft.evaluation.run import load_suite

        a = read_json(args.responses)["outputs"]
        sets[args.responses] = ([it["instruction"] for it in load_suite("harmful", args.data_dir)][: len(a)], a)
        out = args.out or str(Path(args.responses).with_suffix(".keyword_rules.json"))
    else:
        if not args.eval_dirs:
            ap.error("give eval folders or --responses")
        for d in args.eval_dirs:
            f = Path(d) / "harmful.jsonl"
            if not f.is_file():
                raise SystemExit(f"{f}: not found (an `asft eval` folder of the harmful suite?)")
            rows = read_json(f)
            sets[d] = ([r["instruction"] for r in rows], [r["response"] for r in rows])
        if args.out is None and len(sets) > 1:
            ap.error("--out is needed with more than one folder")
        out = args.out or str(Path(args.eval_dirs[0]) / "keyword_rules.json")
    try:
        doc = {name: judge_all(q, a, args.show) for name, (q, a) in sets.items()}
    except AsftError as e:
        raise SystemExit(str(e))
    print(f"| answers | HS keyword | HS keyword-start | HS keyword-plus | plain refusals the reference flags | folder |")
    print("|---|---|---|---|---|---|")
    for name, d in doc.items():
        print(f"| {d['answers']} | {d['hs_keyword']:.1f} | {d['hs_keyword_start']:.1f} | {d['hs_keyword_plus']:.1f} "
              f"| {d['keyword_flags_plain_refusal']} | {name} |")
    for name, d in doc.items():
        for e in d["examples_plain_refusal"]:
            print(f"\n{name} [{e['i']}] {e['instruction']}\n  -> {e['response'][:200]!r}  (keyword: harmful)")
    write_json(out, doc if len(doc) > 1 else next(iter(doc.values())))
    print(json.dumps({"json": out}))


if __name__ == "__main__":
    main()
