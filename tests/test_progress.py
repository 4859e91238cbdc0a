"""Progress lines a person can follow when output goes to a log file, not a terminal."""

import io
import re

from asft.progress import Progress


def test_plain_lines_with_count_rate_and_eta_when_not_a_terminal():
    out = io.StringIO()  # not a TTY, like a redirected stderr
    bar = Progress(4, "generating", "prompts", stream=out, interval=0)
    for _ in range(4):
        bar.advance(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("generating: 0/4 prompts")
    assert re.match(r"generating: 2/4 prompts \([\d.]+ prompts/s, \d+s elapsed, ETA \d+s\)", lines[2])
    assert lines[-1].startswith("generating: 4/4 prompts") and "ETA" not in lines[-1]
    assert len(lines) == 6  # start, 4 advances (interval 0), close


def test_plain_lines_come_at_the_interval_and_disabled_prints_nothing():
    out = io.StringIO()
    bar = Progress(100, "generating", stream=out, interval=3600)
    for _ in range(100):
        bar.advance(1)
    bar.close()
    assert [ln.split(" (")[0] for ln in out.getvalue().splitlines()] == ["generating: 0/100 prompts",
                                                                        "generating: 100/100 prompts"]
    quiet = io.StringIO()
    bar = Progress(5, "x", stream=quiet, enabled=False)
    bar.advance(5)
    bar.close()
    assert quiet.getvalue() == ""
