"""The verdict against the l2 control: wins, losses and ties judged against the seed spread."""

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
            _row("asft", 300, 1.0, 0.0, 90.0, 0.0, "reference")]   # no l2 at 300: no sentence
    lines = verdict(rows)
    assert len(lines) == 4
    by = {line.split(":")[0]: line for line in lines}
    assert by["asft (reference C) λ=30"].endswith("no difference beyond the seed spread")
    assert by["asft (projector) λ=30"].endswith("l2 wins: the control is safer at equal accuracy, beyond the seed spread")
    assert by["asft (reference C) λ=1"].endswith("AsFT WINS: safer at equal accuracy, beyond the seed spread")
    assert by["asft (projector) λ=100"].endswith("no difference beyond the seed spread")
    assert "HS 35.2 ± 6.8 FA 97.2 ± 1.1 vs l2 HS 33.8 ± 10.4 FA 98.8 ± 1.0" in by["asft (reference C) λ=30"]
    assert label(rows[3]) == "asft (reference C) λ=30" and label(rows[0]) == "l2 λ=30"
