"""The demo: its runs, its result files, and results that do not depend on threads or workers
(a reduced demo on the test-size toy world)."""

import json

import torch

from asft.experiments.demo import demo_config, run_demo


def test_demo_config_expands_to_every_method_over_lambda_and_seeds(toy_world, tmp_path):
    """The demo is the shipped experiment config: aligned once, then per seed SFT, Safe LoRA, per
    lambda AsFT (both forms) and the l2 control, and the hidden-state anchor's curve."""
    import yaml

    from asft.experiments.plan import load_plan

    def plan_of(**kw):
        path = tmp_path / "demo.yaml"
        path.write_text(yaml.safe_dump(demo_config(size="test", cache_dir=toy_world.root.parent, **kw)))
        return load_plan(path, tmp_path / "out", log=lambda *a: None)

    jobs = plan_of().jobs
    assert len(jobs) == 1 + 3 * (2 + 4 + 3 + 4 + 2) == 46
    groups = {j.spec.group for j in jobs}
    for lam in (1, 10, 30, 100):
        assert {f"asft-reference-lam{lam:g}", f"l2-lam{lam:g}"} <= groups
        assert (f"asft-projector-lam{lam:g}" in groups) == (lam != 1)
    assert {"hidden-anchor-lam0.01", "hidden-anchor-lam0.1"} <= groups
    assert [j.spec.name for j in plan_of(seeds=[7], lambdas=[5.0]).jobs] == [
        "aligned", "sft-s7", "safelora-s7", "asft-reference-lam5-s7", "asft-projector-lam5-s7", "l2-lam5-s7",
        "hidden-anchor-lam5-s7"]


def _strip(rows):
    """Result rows without wall-clock fields."""
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


def test_reduced_demo_writes_results_and_is_independent_of_threads_and_workers(toy_world, tmp_path):
    methods = ["aligned", "sft", {"method": "asft", "lam": [100], "form": "reference"}, {"method": "l2", "lam": [100]},
               "safelora"]
    kw = dict(size="test", cache_dir=toy_world.root.parent, mix={"task": "topic", "n": 200, "p": 0.1},
              methods=methods, seeds=[0, 1], log=lambda *a: None)
    before = torch.get_num_threads()
    docs = {}
    try:
        for name, threads, workers in (("t1", 1, 1), ("t2", 2, 1), ("w2", 1, 2)):
            torch.set_num_threads(threads)
            docs[name] = run_demo(tmp_path / name, workers=workers, landscape=name == "t1", **kw)
    finally:
        torch.set_num_threads(before)
    # identical numbers at 1 and 2 threads, in one process or two
    runs = {name: sorted(_strip(doc["runs"]), key=lambda r: r["group"] + str(r["seed"])) for name, doc in docs.items()}
    assert runs["t1"] == runs["t2"] == runs["w2"]
    assert _strip(docs["t1"]["rows"]) == _strip(docs["t2"]["rows"]) == _strip(docs["w2"]["rows"])  # rows carry run times
    land = docs["t1"]["landscape"]  # the demo's landscape, with the SFT, AsFT and l2 adapters placed on it
    assert [p.split("/")[-1] for p in land["pictures"]] == ["landscape_1d.png", "landscape_2d.png"]
    assert sum("alpha" in line and "beta" in line for line in land["summary"]) == 3  # sft, asft, l2 at lambda 100

    out = tmp_path / "t1"
    saved = json.loads((out / "results.json").read_text())
    assert {k: v for k, v in docs["t1"].items() if k != "plots"} == saved and saved["version"] == 1
    assert saved["env"]["cpu_capability"] and saved["env"]["torch"] == torch.__version__
    rows = {r["group"]: r for r in saved["rows"]}
    assert list(rows) == ["aligned", "sft", "safelora", "l2-lam100", "asft-reference-lam100"]  # table order
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
    # a verdict for each method that is not SFT or the control, against both
    assert [v.split(":")[0] for v in saved["verdict"]] == ["Safe LoRA", "asft (reference C) λ=100"]
    assert all("vs l2 λ=100" in v and "vs SFT" in v for v in saved["verdict"])
    md = (out / "results.md").read_text()
    assert "| SFT | " in md and "| l2 λ=100 | " in md and all(v in md for v in saved["verdict"])
    assert (out / "report.html").is_file() and (out / "demo.yaml").is_file()
    assert (out / "runs" / "topic" / "n200-p0.1" / "sft-s0" / "adapter" / "train_log.jsonl").is_file()
