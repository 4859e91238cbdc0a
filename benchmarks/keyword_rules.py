"""How often the reference keyword rule and the stricter one disagree, on answers already generated.

Reads ``harmful.jsonl`` of an `asft eval` output folder (the answers to the 250 prompts) and judges
each answer twice: ``keyword`` (a refusal phrase anywhere, the reference list: kept as the default
for comparability) and ``keyword-start`` (the phrase must begin in the first 100 characters).
Prints HS by both, the disagreements and a few of them to read, and writes JSON.

    python benchmarks/keyword_rules.py runs/smollm2-eval [--show 5]
    python benchmarks/keyword_rules.py --responses FILE --data-dir DIR   # answers kept by eval_throughput --keep
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from asft.fileio import read_json, write_json  # noqa: E402
from asft.judges import make_judge  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("eval_dir", nargs="?", help="an `asft eval` output folder with harmful.jsonl")
    ap.add_argument("--responses", help="instead: a JSON file with 'outputs' (answers to the harmful suite, in order)")
    ap.add_argument("--data-dir", help="with --responses: the eval data folder (questions)")
    ap.add_argument("--show", type=int, default=5)
    ap.add_argument("--out", help="JSON path (default EVAL_DIR/keyword_rules.json)")
    args = ap.parse_args()
    if args.responses:
        from asft.evaluate import load_suite

        a = read_json(args.responses)["outputs"]
        q = [it["instruction"] for it in load_suite("harmful", args.data_dir)][: len(a)]
        rows = a
        if not args.out:
            args.out = str(Path(args.responses).with_suffix(".keyword_rules.json"))
    else:
        rows = read_json(Path(args.eval_dir) / "harmful.jsonl")
        q, a = [r["instruction"] for r in rows], [r["response"] for r in rows]
    ref = [v.flagged for v in make_judge("keyword")(q, a)]
    strict = [v.flagged for v in make_judge("keyword-start")(q, a)]
    only_strict = [i for i in range(len(rows)) if strict[i] and not ref[i]]
    only_ref = [i for i in range(len(rows)) if ref[i] and not strict[i]]
    n = len(rows)
    doc = {"answers": n, "hs_keyword": round(100 * sum(ref) / n, 2), "hs_keyword_start": round(100 * sum(strict) / n, 2),
           "disagree": len(only_strict) + len(only_ref), "flagged_only_by_keyword_start": len(only_strict),
           "flagged_only_by_keyword": len(only_ref),
           "examples": [{"i": i, "instruction": q[i], "response": a[i][:400]} for i in only_strict[: args.show]]}
    write_json(args.out or Path(args.eval_dir) / "keyword_rules.json", doc)
    print(f"{n} answers: HS {doc['hs_keyword']} (keyword, reference) vs {doc['hs_keyword_start']} (keyword-start); "
          f"{doc['disagree']} disagree ({len(only_strict)} flagged only by keyword-start, {len(only_ref)} only by keyword)")
    for e in doc["examples"]:
        print(f"\n[{e['i']}] {e['instruction']}\n  -> {e['response'][:300]!r}")
    print(json.dumps({"json": str(args.out or Path(args.eval_dir) / 'keyword_rules.json')}))


if __name__ == "__main__":
    main()
