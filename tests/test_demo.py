"""The demo writes the documented result files (a reduced demo on the test-size toy world)."""

import json

from asft.demo import demo_specs, run_demo
from asft.experiment import RunSpec


def test_demo_specs_cover_every_method_at_both_lambdas():
    names = [s.name for s in demo_specs()]
    assert names == ["aligned", "sft-s0", "asft-safelora-lam1-s0", "asft-projector-lam1-s0", "l2-lam1-s0",
                     "asft-safelora-lam30-s0", "asft-projector-lam30-s0", "l2-lam30-s0", "safelora-s0"]


def test_reduced_demo_writes_results(toy_world, tmp_path):
    out = tmp_path / "demo"
    specs = [RunSpec("aligned"), RunSpec("sft"), RunSpec("asft", 100.0, "safelora"), RunSpec("l2", 100.0)]
    doc = run_demo(out, size="test", cache_dir=toy_world.root.parent, mix={"task": "topic", "n": 200, "p": 0.1},
                   specs=specs, log=lambda *a: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved == doc and saved["version"] == 1
    rows = {r["group"]: r for r in saved["rows"]}
    assert set(rows) == {"aligned", "sft", "asft-safelora-lam100", "l2-lam100"}
    for r in saved["rows"]:
        assert {"method", "lambda", "form", "task", "hs", "fa", "seeds"} <= set(r)
        assert r["task"] == "topic"
    # the toy world's harmful fine-tuning problem shows even in this small run
    assert rows["sft"]["hs"] > rows["aligned"]["hs"] + 20
    md = (out / "results.md").read_text()
    assert "| SFT |" in md and "| l2 λ=100 |" in md
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "sft-s0" / "adapter" / "train_log.jsonl").is_file()
