"""The generated answers behind a report, kept beside it so that anyone can judge them again.

``export_answers`` copies, for every finished run under some folders, what a second judge needs and
nothing of the model: ``row.json`` and ``key.txt``, and of its ``eval/`` folder each suite's result
(``<suite>.result.json``) and answers (``<suite>.jsonl``, gzip-compressed as ``<suite>.jsonl.gz``),
in the runs' own layout. ``asft report OUT/answers --rejudge keyword-plus`` then scores the same
answers without the model (``rejudged_hs`` reads either form). The gzip stream is written with a fixed
time stamp, so the same answers give the same bytes (a re-export changes nothing in git).
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

from asft.errors import AsftError
from asft.fileio import atomic_path, read_text, write_text

ANSWERS = "answers"


def export_answers(dirs: Sequence[str | Path], out: str | Path) -> list[Path]:
    """Copy every finished run's row, key and evaluation answers under ``dirs`` into ``out`` (paths
    relative to the folder given); returns the run folders written. A run whose answers are missing
    is an error, not a silent gap: the report's numbers must all be checkable."""
    out, written = Path(out), []
    for d in map(Path, dirs):
        for row in sorted(d.rglob("row.json")):
            run = row.parent
            if out.resolve() in run.resolve().parents:
                continue  # an earlier export inside the folder given
            dest = out / run.relative_to(d)
            results = sorted((run / "eval").glob("*.result.json"))
            if not results:
                raise AsftError(f"{run}: a finished run without its evaluation (eval/*.result.json)")
            for name in ("row.json", "key.txt"):
                if (run / name).is_file():
                    write_text(dest / name, read_text(run / name))
            for res in results:
                suite = res.name[: -len(".result.json")]
                answers, kept = run / "eval" / f"{suite}.jsonl", run / "eval" / f"{suite}.jsonl.gz"
                if not answers.is_file() and not kept.is_file():
                    raise AsftError(f"{answers}: the answers behind {res.name} are missing")
                write_text(dest / "eval" / res.name, read_text(res))
                if (dest / "eval" / kept.name).resolve() == kept.resolve():
                    continue
                # a run put back from an earlier export holds its answers compressed already
                data = answers.read_bytes() if answers.is_file() else gzip.decompress(kept.read_bytes())
                with atomic_path(dest / "eval" / kept.name) as tmp:
                    tmp.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
            written.append(dest)
    return written


__all__ = ["ANSWERS", "export_answers"]
