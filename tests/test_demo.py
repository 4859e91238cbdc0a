"""The demo: its runs, its result files, and results that do not depend on threads or workers
(a reduced demo on the test-size toy world)."""

import json

import torch

from asft.experiments.demo import DEMO_LAMBDAS, demo_specs, run_demo
from asft.experiments.runs import RunSpec


def test_demo_specs_cover_every_method_over_lambda_and_seeds():
    specs = demo_specs()
    assert specs[0] == RunSpec("aligned")
    assert len(specs) == 1 + 3 * (2 + 3 * len(DEMO_LAMBDAS)) == 43
    groups = {s.group for s in specs}
    for lam in DEMO_LAMBDAS:
        assert {f"asft-reference-lam{lam:g}", f"asft-projector-lam{lam:g}", f"l2-lam{lam:g}"} <= groups
    for seed in (0, 1, 2):
        assert {"sft", "safelora"} <= {s.method for s in specs if s.seed == seed}
    assert [s.name for s in demo_specs((5.0,), (7,))] == [
        "aligned", "sft-s7", "safelora-s7", "asft-reference-lam5-s7", "asft-projector-lam5-s7", "l2-lam5-s7"]


def _strip(rows):
    """Result rows without wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def test_reduced_demo_writes_results_and_is_independent_of_threads_and_workers(toy_world, tmp_path):
    specs = [RunSpec("aligned"), RunSpec("sft", seed=0), RunSpec("sft", seed=1), RunSpec("asft", 100.0, "reference", 0),
             RunSpec("l2", 100.0, seed=0), RunSpec("safelora", seed=0)]
    kw = dict(size="test", cache_dir=toy_world.root.parent, mix={"task": "topic", "n": 200, "p": 0.1},
              specs=specs, log=lambda *a: None)
    before = torch.get_num_threads()
    docs = {}
    try:
        for name, threads, workers in (("t1", 1, 1), ("t2", 2, 1), ("w2", 1, 2)):
            torch.set_num_threads(threads)
            docs[name] = run_demo(tmp_path / name, workers=workers, landscape=name == "t1", **kw)
    finally:
        torch.set_num_threads(before)
    # identical numbers at 1 and 2 threads, in one process or two
    assert _strip(docs["t1"]["runs"]) == _strip(docs["t2"]["runs"]) == _strip(docs["w2"]["runs"])
    assert docs["t1"]["rows"] == docs["t2"]["rows"] == docs["w2"]["rows"]
    land = docs["t1"]["landscape"]  # the demo's landscape, with the SFT and l2 adapters placed on it
    assert [p.split("/")[-1] for p in land["pictures"]] == ["landscape_1d.png", "landscape_2d.png"]
    assert sum("alpha" in line and "beta" in line for line in land["summary"]) == 3  # sft, asft, l2 at lambda 100

    out = tmp_path / "t1"
    saved = json.loads((out / "results.json").read_text())
    assert saved == docs["t1"] and saved["version"] == 1
    assert saved["env"]["cpu_capability"] and saved["env"]["torch"] == torch.__version__
    rows = {r["group"]: r for r in saved["rows"]}
    assert set(rows) == {"aligned", "sft", "asft-reference-lam100", "l2-lam100", "safelora"}
    assert rows["sft"]["seeds"] == [0, 1] and rows["sft"]["hs_std"] >= 0
    for r in saved["rows"]:
        assert {"method", "lambda", "form", "task", "hs", "hs_std", "fa", "fa_std", "seeds"} <= set(r)
    # the harmful fine-tuning problem: the aligned model refuses, both SFT seeds comply and learn
    aligned = rows["aligned"]["hs"]
    sft_runs = [r for r in saved["runs"] if r["method"] == "sft"]
    assert aligned <= 10.0
    assert all(r["hs"] >= aligned + 50.0 and r["fa"] >= 80.0 for r in sft_runs)
    # a strong penalty holds the update: safer than SFT
    assert rows["l2-lam100"]["hs"] < rows["sft"]["hs"] and rows["asft-reference-lam100"]["hs"] < rows["sft"]["hs"]
    assert len(saved["verdict"]) == 1 and saved["verdict"][0].startswith("asft (reference C) λ=100")
    md = (out / "results.md").read_text()
    assert "| SFT | " in md and "| l2 λ=100 |" in md and saved["verdict"][0] in md
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "runs" / "sft-s0" / "adapter" / "train_log.jsonl").is_file()
