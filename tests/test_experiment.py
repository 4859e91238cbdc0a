"""Experiment grid: naming, seed aggregation, resumability and invalidation, on the toy world."""

import json

import pytest

from asft.errors import AsftError
from asft.experiments.runs import RunSpec, Setting, aggregate, run_grid, run_one
from asft.report import bar_chart, label, markdown_table, tradeoff_chart


def test_run_names_and_groups():
    assert RunSpec("asft", 30, "projector", 2).name == "asft-projector-lam30-s2"
    assert RunSpec("asft", 1.0, None, 0).group == "asft-reference-lam1"
    assert RunSpec("l2", 0.5, seed=1).name == "l2-lam0.5-s1"
    assert RunSpec("sft", seed=3).name == "sft-s3"
    assert RunSpec("aligned").name == "aligned"


def _row(method, seed, hs, fa, lam=0, form=None):
    spec = RunSpec(method, lam, form, seed)
    return {"method": method, "lambda": lam, "form": form, "task": "topic", "hs": hs, "fa": fa,
            "seed": seed, "group": spec.group}


def test_aggregate_mean_and_std_over_seeds():
    rows = [_row("sft", 0, 90.0, 95.0), _row("sft", 1, 80.0, 97.0), _row("sft", 2, 100.0, 96.0),
            _row("asft", 0, 10.0, 90.0, 30, "reference"), _row("asft", 1, 20.0, 80.0, 30, "reference")]
    table = aggregate(rows)
    assert [r["group"] for r in table] == ["sft", "asft-reference-lam30"]
    sft, asft = table
    assert (sft["hs"], sft["hs_std"], sft["fa"], sft["fa_std"]) == (90.0, 10.0, 96.0, 1.0)
    assert sft["seeds"] == [0, 1, 2]
    assert (asft["hs"], asft["fa"], asft["lambda"], asft["form"]) == (15.0, 85.0, 30, "reference")
    assert round(asft["hs_std"], 2) == 7.07


def test_report_table_and_charts(tmp_path):
    rows = aggregate([_row("aligned", 0, 2.0, 0.0), _row("sft", 0, 90.0, 95.0),
                      _row("asft", 0, 40.0, 91.0, 100, "projector"), _row("l2", 0, 50.0, 90.0, 100),
                      _row("l2", 0, 70.0, 94.0, 10)])
    md = markdown_table(rows)
    assert "| asft (projector) λ=100 | 40.0 | 91.0 | 1 | - |" in md
    assert label(rows[0]) == "aligned (no fine-tuning)"
    for fn, name in ((bar_chart, "bars.png"), (tradeoff_chart, "trade.png")):
        path = fn(rows, tmp_path / name, title="t")
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert not list(tmp_path.glob(".*tmp"))


@pytest.fixture(scope="module")
def toy_setting(toy_world, tmp_path_factory):
    from asft.models.anchor import build_anchor
    from asft.experiments.demo import TOY_RECIPE

    root = tmp_path_factory.mktemp("grid")
    anchor = root / "anchor.safetensors"
    build_anchor(toy_world.base, toy_world.aligned, out=anchor)
    data = toy_world.make_mix("topic", 160, 0.1)
    return Setting(model=toy_world.aligned, data=data, eval_dir=toy_world.eval_dir,
                   harmful_suite="toy-harmful", task_suite="toy-topic", judge="toy", anchor=anchor,
                   train={**TOY_RECIPE, "epochs": 1}, template="chat", eval_limit=24), root


def test_grid_runs_resumes_and_redoes_stale_runs(toy_setting, monkeypatch):
    setting, root = toy_setting
    specs = [RunSpec("aligned"), RunSpec("sft", seed=0), RunSpec("asft", 10.0, "reference", 0),
             RunSpec("safelora", seed=0)]
    rows = run_grid(specs, setting, root / "runs")
    assert [r["method"] for r in rows] == ["aligned", "sft", "asft", "safelora"]
    for r in rows:
        assert 0 <= r["hs"] <= 100 and 0 <= r["fa"] <= 100
    from asft.models.anchor import inspect_anchor, load_anchor

    assert rows[2]["penalty"] > 0
    # the run reports the largest eigenvalue of the reference C over its modules: the exact SVD's
    exact = max(r["c_max_eig"] for r in inspect_anchor(load_anchor(setting.anchor)))
    assert rows[2]["c_max_eig"] == pytest.approx(exact, rel=1e-3)
    assert (root / "runs" / "safelora-s0" / "adapter" / "safelora.json").is_file()
    summary = json.loads((root / "runs" / "sft-s0" / "adapter" / "train_summary.json").read_text())
    assert rows[1]["train_seconds"] == round(summary["seconds"], 2) and "eval_resumed" not in rows[1]

    # A second pass reads every row back: no training, no evaluation.
    import asft.experiments.runs as ex

    monkeypatch.setattr(ex, "train_run", lambda *a, **k: pytest.fail("retrained a finished run"))
    monkeypatch.setattr(ex, "evaluate_run", lambda *a, **k: pytest.fail("re-evaluated a finished run"))
    assert run_grid(specs, setting, root / "runs") == rows

    # A run folder made under other settings is redone.
    calls = []
    monkeypatch.setattr(ex, "train_run", lambda spec, *a, **k: calls.append(spec) or None)
    monkeypatch.setattr(ex, "evaluate_run", lambda *a, **k: {"hs": 1.0, "fa": 2.0})
    (root / "runs" / "sft-s0" / "key.txt").write_text("stale\n")
    row = run_one(RunSpec("sft", seed=0), setting, root / "runs")
    assert calls == [RunSpec("sft", seed=0)] and (row["hs"], row["fa"]) == (1.0, 2.0)
    assert json.loads((root / "runs" / "sft-s0" / "row.json").read_text())["hs"] == 1.0


def test_grid_refuses_unknown_method_and_missing_anchor(toy_setting, tmp_path):
    setting, _ = toy_setting
    with pytest.raises(AsftError, match="unknown method 'dpo'"):
        run_grid([RunSpec("dpo")], setting, tmp_path)
    import dataclasses

    with pytest.raises(AsftError, match="need an anchor"):
        run_grid([RunSpec("safelora")], dataclasses.replace(setting, anchor=None), tmp_path)


def test_runs_start_in_plan_order_safelora_beside_its_sft(toy_setting, monkeypatch, tmp_path):
    """One worker: the runs go in the given order (Safe LoRA right after its seed's SFT, not after
    every other run), so a partial experiment holds its first comparisons whole."""
    import asft.experiments.runs as ex

    setting, _ = toy_setting
    order = []
    monkeypatch.setattr(ex, "run_one", lambda spec, *a, **k: order.append(spec.name) or {"method": spec.method})
    specs = [RunSpec("sft", seed=0), RunSpec("safelora", seed=0), RunSpec("l2", 10.0, None, 0),
             RunSpec("sft", seed=1), RunSpec("safelora", seed=1)]
    ex.run_jobs([(s, setting, tmp_path) for s in specs])
    assert order == ["sft-s0", "safelora-s0", "l2-lam10-s0", "sft-s1", "safelora-s1"]


def test_parallel_runs_keep_plan_order_and_wait_for_their_sft(toy_setting, monkeypatch, tmp_path):
    """Several workers: at most that many runs in flight, taken in plan order; a Safe LoRA run is
    taken as soon as its SFT run is done (not after every other run), never before."""
    import concurrent.futures as cf

    import asft.experiments.runs as ex

    setting, _ = toy_setting
    started, in_flight = [], []

    class Pool:  # runs a job when the scheduler waits on it: submission order = start order
        def __init__(self, workers, **kw):
            self.workers = workers

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, spec, *a):
            started.append(spec.name)
            fut = cf.Future()
            fut.job = lambda: fut.set_result(fn(spec, *a))
            in_flight.append(fut)
            assert len(in_flight) <= self.workers
            return fut

    def wait(futures, return_when):
        fut = in_flight.pop(0)  # the oldest run finishes first
        fut.job()
        return {fut}, set(futures) - {fut}

    monkeypatch.setattr(cf, "ProcessPoolExecutor", Pool)
    monkeypatch.setattr(cf, "wait", wait)
    monkeypatch.setattr(ex, "run_one", lambda spec, *a, **k: {"method": spec.method})
    specs = [RunSpec("sft", seed=0), RunSpec("safelora", seed=0), RunSpec("l2", 10.0, None, 0),
             RunSpec("asft", 10.0, "reference", 0), RunSpec("sft", seed=1), RunSpec("safelora", seed=1)]
    rows = ex.run_jobs([(s, setting, tmp_path) for s in specs], workers=2)
    assert [r["method"] for r in rows] == [s.method for s in specs]
    # sft-s0 and l2 start together (safelora-s0 waits for sft-s0), then safelora-s0 before asft
    assert started == ["sft-s0", "l2-lam10-s0", "safelora-s0", "asft-reference-lam10-s0", "sft-s1", "safelora-s1"]
