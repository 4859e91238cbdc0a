"""`asft experiment`: config checks, grid expansion, shards, and a killed experiment that resumes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from asft.errors import AsftError
from asft.experiments.plan import load_plan, parse_shard, run_experiment
from asft.experiments.runs import run_key, run_state

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path, toy_world, **over):
    """A small experiment on the test toy world (reused from the session cache)."""
    cfg = {"name": "small", "world": {"size": "test", "seed": 0, "cache_dir": str(toy_world.root.parent)},
           "plugins": ["asft.toy"], "judge": "toy", "template": "chat", "harmful_suite": "toy-harmful",
           "tasks": {"topic": {"suite": "toy-topic"}}, "n": 160, "p": [0.1], "seeds": [0],
           "methods": ["aligned", "sft", "safelora", {"method": "l2", "lam": 10}],
           "train": {"lr": 1e-3, "epochs": 1, "batch_size": 16, "max_length": 128, "progress": False},
           "eval": {"limit": 24, "batch_size": 64}}
    cfg.update(over)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_plan_expands_the_grid_and_shards_keep_safelora_with_its_sft(toy_world, tmp_path):
    path = _config(tmp_path, toy_world, p=[0, 0.1], seeds=[0, 1],
                   tasks={"topic": {"suite": "toy-topic"}, "sentiment": {"suite": "toy-sentiment"}},
                   methods=["aligned", "sft", "safelora", {"method": "asft", "lam": [1, 30]}, "lisa"])
    plan = load_plan(path, tmp_path / "out")
    # per task: aligned once; per (p, seed): sft, safelora, asft x 2, lisa
    assert len(plan.jobs) == 2 * (1 + 2 * 2 * 5)
    names = {str(j.folder.relative_to(tmp_path / "out")) for j in plan.jobs}
    assert "runs/topic/aligned" in names and "runs/sentiment/n160-p0.1/asft-reference-lam30-s1" in names
    assert Path(plan.jobs[1].setting.train["safety_data"]).is_file()  # the toy world's refusals
    for count in (1, 2, 3, 7):
        shards = [plan.shard(i, count) for i in range(1, count + 1)]
        folders = [str(j.folder) for s in shards for j in s]
        assert sorted(folders) == sorted(str(j.folder) for j in plan.jobs)  # a partition
        for s in shards:
            mine = {str(j.folder) for j in s}
            for j in s:
                if j.spec.method == "safelora":
                    assert str(j.parent / f"sft-s{j.spec.seed}") in mine
    # the shared evaluation store: $ASFT_EVAL_CACHE (off under the tests), eval.shared_cache: false
    assert all(j.setting.eval_store is None for j in plan.jobs)
    os.environ["ASFT_EVAL_CACHE"] = str(tmp_path / "store")
    try:
        assert load_plan(path, tmp_path / "out").jobs[0].setting.eval_store == tmp_path / "store"
        off = _config(tmp_path, toy_world, eval={"limit": 24, "shared_cache": False})
        assert load_plan(off, tmp_path / "out").jobs[0].setting.eval_store is None
    finally:
        os.environ["ASFT_EVAL_CACHE"] = "off"
    # a method's own seeds: an expensive baseline at seed 0 beside the others at every seed
    some = _config(tmp_path, toy_world, seeds=[0, 1], methods=["sft", {"method": "l2", "lam": [1, 3], "seeds": [0]}])
    runs = sorted(j.spec.name for j in load_plan(some, tmp_path / "out").jobs)
    assert runs == ["l2-lam1-s0", "l2-lam3-s0", "sft-s0", "sft-s1"]
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "x"):
        with pytest.raises(AsftError, match="--shard"):
            parse_shard(bad)


@pytest.mark.parametrize("over,message", [
    ({"methods": ["dpo"]}, "unknown method 'dpo'"),
    ({"methods": [{"method": "asft"}]}, "method asft needs lam"),
    ({"methods": [{"method": "sft", "lam": 1}]}, "method sft takes no lam"),
    ({"tasks": {"topic": {"suite": "toy-topic", "pool": "x.json"}}}, "has a pool but no harmful"),
    ({"tasks": {"math": {"suite": "toy-topic"}}}, "the toy world has tasks"),
    ({"train": {"lr": 1, "seed": 3}}, "train option 'seed' is set by the experiment itself"),
    ({"train": {"lrr": 1}}, "train: unknown option 'lrr' \\(did you mean 'lr'"),
    ({"evals": {}}, "unknown key 'evals'"),
    ({"methods": ["act-anchor"]}, "method act-anchor needs lam"),
    ({"methods": ["sft", {"method": "act-anchor", "lam": 1}], "safety_data": {"world": "refusals"}},
     r"safety_data should be a file, or \{world: benign\}"),
    # before: lam: [] dropped the method from the plan, seeds: [] / p: [] planned nothing, silently
    ({"methods": ["sft", {"method": "l2", "lam": []}]}, "lam is an empty list"),
    ({"seeds": []}, "seeds is an empty list"),
    ({"p": []}, "p is an empty list"),
    ({"methods": ["sft", {"method": "l2", "lam": 1, "seeds": [5]}]}, r"seeds \[5\] are not among the experiment's"),
    ({"methods": [{"method": "aligned", "seeds": [0]}, "sft"]}, "does not fine-tune: it takes no seeds"),
])
def test_plan_refuses_bad_configs_by_name(toy_world, tmp_path, over, message):
    with pytest.raises(AsftError, match=message):
        load_plan(_config(tmp_path, toy_world, **over), tmp_path / "out")


def test_anchor_configs_plan_their_runs_and_the_benign_control_uses_the_aligned_models_answers(toy_world, tmp_path):
    """configs/toy_anchors*.yaml expand to their grids; ``safety_data: {world: benign}`` writes benign
    requests answered by the aligned model (no refusals among them) and the plan records the overlap of
    the anchor data with the harmful evaluation prompts."""
    import asft.toy  # noqa: F401

    sizes = {"toy_anchors": 1 + 2 * 3 * 35, "toy_anchors_benign": 1 + 2 * 3 * 27, "toy_anchors_equal": 1 + 2 * 3 * 12}
    for name, n in sizes.items():
        raw = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
        raw["world"] = {"size": "test", "seed": 0, "cache_dir": str(toy_world.root.parent)}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw))
        lines = []
        plan = load_plan(path, tmp_path / name, log=lines.append)
        assert len(plan.jobs) == n, name
        assert plan.config["safety_overlap"] == 0 and any("0 of its prompts are among" in x for x in lines)
    benign = json.loads((tmp_path / "toy_anchors_benign" / "data" / "benign.json").read_text())
    from asft.toy.lexicon import REFUSALS

    assert len(benign) == 300 and not any(r["output"] in REFUSALS for r in benign)
    assert all(r["output"] for r in benign)


def test_a_config_cannot_import_code_or_write_outside_out(toy_world, tmp_path, monkeypatch):
    """An experiment config is data: a plugin that is not the package's own is refused before it is
    imported (even for --dry-run) unless the command line allows it; a task name cannot leave --out."""
    marker = tmp_path / "imported"
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "evilplug.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    cfg = _config(tmp_path, toy_world, plugins=["asft.toy", "evilplug"])
    with pytest.raises(AsftError, match="plugin 'evilplug' is not imported: a config is data"):
        load_plan(cfg, tmp_path / "out", log=lambda m: None)
    assert not marker.exists()
    load_plan(cfg, tmp_path / "out", log=lambda m: None, allow_plugins=["evilplug"])
    assert marker.read_text() == "ran"
    for bad in ("../../../escaped_task", "a/b", ".hidden", ""):
        with pytest.raises(AsftError, match="task name .* should be letters, digits"):
            load_plan(_config(tmp_path, toy_world, tasks={bad: {"suite": "toy-topic"}}), tmp_path / "out2",
                      log=lambda m: None)
    assert not (tmp_path / "escaped_task").exists() and not (tmp_path.parent / "escaped_task").exists()
    cfg = _config(tmp_path, toy_world, plugins=["asft.toy", "evilplug"])  # (_config rewrites one file)
    marker.unlink()
    proc = subprocess.run([sys.executable, "-m", "asft", "experiment", str(cfg), "--out", str(tmp_path / "o3"),
                           "--dry-run"], capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{tmp_path / 'mods'}"})
    assert proc.returncode == 2 and "--allow-plugin evilplug" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()  # --dry-run imported nothing it was not allowed to


def test_a_run_key_covers_the_training_defaults(toy_world, tmp_path, monkeypatch):
    """A changed TrainConfig default (a new release) is a new key: the run is redone, not reused with the
    old setting; options that only change what is printed are not in it."""
    import asft.experiments.runs as runs

    setting = load_plan(_config(tmp_path, toy_world), tmp_path / "out", log=lambda m: None).jobs[1].setting
    key, eval_key = setting._key(False), setting._key(True)
    defaults = runs.train_defaults()
    assert "anchor_batch" in defaults and "logging_steps" not in defaults and "progress" not in defaults
    monkeypatch.setattr(runs, "train_defaults", lambda: {**defaults, "anchor_batch": defaults["anchor_batch"] + 1})
    assert setting._key(False) != key
    assert setting._key(True) == eval_key  # the aligned model's evaluation does not depend on training


def test_output_files_keep_the_users_umask(tmp_path):
    from asft.fileio import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_plan_with_fixed_files_and_pools(toy_world, tmp_path):
    """Real-model form: model/base/eval_dir folders, a fixed data file (n, p from its name) and pools."""
    from asft.fileio import read_json, write_json

    fixed = tmp_path / "SST2_1k_p_0.1.json"
    fixed.write_bytes(Path(toy_world.make_mix("topic", 160, 0.1)).read_bytes())
    records = read_json(fixed)
    write_json(tmp_path / "pool.json", records)
    write_json(tmp_path / "harm.json", records)
    cfg = _config(tmp_path, toy_world, world=None, model=str(toy_world.aligned), base=str(toy_world.base),
                  eval_dir=str(toy_world.eval_dir), n=[40, 80], p=[0.25],
                  tasks={"fixed": {"suite": "toy-topic", "data": fixed.name},
                         "pooled": {"suite": "toy-topic", "pool": "pool.json", "harmful": "harm.json"}},
                  methods=["sft"])
    plan = load_plan(cfg, tmp_path / "out")
    cells = sorted({(j.setting.task, j.setting.n, j.setting.p) for j in plan.jobs})
    assert cells == [("fixed", 1000, 0.1), ("pooled", 40, 0.25), ("pooled", 80, 0.25)]
    pooled = read_json(tmp_path / "out" / "data" / "pooled-n80-p0.25.json")
    assert len(pooled) == 80


def test_killed_experiment_resumes_without_redoing_finished_runs(toy_world, tmp_path):
    """Kill `asft experiment` after its first finished runs; the rerun keeps them (same files,
    untouched), does the rest and writes the report."""
    path = _config(tmp_path, toy_world)
    out = tmp_path / "out"
    env = {**os.environ, "ASFT_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "asft", "experiment", str(path), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300
    try:
        while len(list(out.rglob("row.json"))) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no run finished in 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = {p: (p.stat().st_mtime_ns, p.read_text()) for p in out.rglob("row.json")}
    assert 2 <= len(done) < 4 and not (out / "results.json").exists()
    logs = []
    res = run_experiment(path, out, log=logs.append)
    assert f"{len(done)} already done (kept)" in logs[0]
    assert res["finished"] == res["total"] == 4
    for p, (mtime, text) in done.items():
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text
    doc = json.loads((out / "results.json").read_text())
    assert {r["group"] for r in doc["rows"]} == {"aligned", "sft", "safelora", "l2-lam10"}
    assert (out / "report.html").is_file() and (out / "results.csv").is_file()
    # a finished run made under another key (here: a planted one) is not counted as kept: it is redone
    stale = sorted(out.rglob("row.json"))[-1].parent
    (stale / "key.txt").write_text("0123456789abcdef\n")
    logs = []
    run_experiment(path, out, log=logs.append)
    assert "3 already done (kept), 1 done under another key (other model, data or settings: redone)" in logs[0]
    assert (stale / "key.txt").read_text().strip() != "0123456789abcdef"


def test_shipped_configs(tmp_path):
    """configs/: the toy table expands to its 164 runs; the Llama-2 one names what to fill in."""
    import asft.toy  # noqa: F401

    plan = load_plan(REPO / "configs" / "toy_paper_table.yaml", tmp_path / "toy", log=lambda m: None)
    assert len(plan.jobs) == 2 * (1 + 3 * 3 * 9)
    assert {j.spec.method for j in plan.jobs} == {"aligned", "sft", "safelora", "safeinstr", "bea", "lisa", "l2",
                                                   "asft"}
    with pytest.raises(AsftError, match=r"model /path/to/Llama-2-7b-chat-hf is not a folder"):
        load_plan(REPO / "configs" / "llama2_paper_table.yaml", tmp_path / "llama")


@pytest.mark.parametrize("name", ["smollm2_sst2", "gemma3_sst2"])
def test_real_model_configs(tmp_path, name):
    """The real-model protocols: train options are TrainConfig's; the full plan where the pair is here."""
    from asft.training.config import TrainConfig

    path = REPO / "configs" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert set(raw["train"]) <= set(TrainConfig.__dataclass_fields__)
    assert raw["train"]["group_by_length"] is True and raw["train"]["dtype"] == "bfloat16" and raw["seeds"] == [0, 1]
    model = (path.parent / raw["model"]).resolve()
    if not model.is_dir() or not Path(raw["base"]).expanduser().is_dir():
        pytest.skip(f"the {name} pair is not here (scripts/get-real-models.sh, scripts/real-pair.sh)")
    entries = [m if isinstance(m, str) else m["method"] for m in raw["methods"]]
    assert {"sft", "l2", "asft", "safelora", "safeinstr", "bea", "lisa", "hidden-anchor", "act-anchor"} <= set(entries)
    if not (path.parent / raw["safety_data"]).is_file():
        pytest.skip(f"no safety data {raw['safety_data']} (scripts/real-protocol.sh makes it)")
    plan = load_plan(path, tmp_path / name, log=lambda m: None)
    # the aligned model once, every other entry at both seeds, SafeInstr, BEA, Lisa at seed 0 only
    every_seed = [m for m in raw["methods"] if m != "aligned" and not (isinstance(m, dict) and "seeds" in m)]
    assert len(every_seed) >= 14
    assert len(plan.jobs) == 1 + 2 * len(every_seed) + 3
    assert sorted(j.spec.name for j in plan.jobs if j.spec.method in ("safeinstr", "bea", "lisa")) == [
        "bea-s0", "lisa-s0", "safeinstr-s0"]


def test_overrides_and_a_dry_run_that_builds_nothing(toy_world, tmp_path):
    """``KEY=VALUE`` (dotted) sets config keys; Hugging Face names work in train:; the whole config,
    each run's options included, is checked before the anchor is computed; --dry-run writes nothing."""
    path = _config(tmp_path, toy_world, methods=["sft", {"method": "asft", "lam": 1}])
    out = tmp_path / "out"
    plan = load_plan(path, out, overrides=["train.learning_rate=5e-4", "seeds=[1, 2]", "eval.limit=8"],
                     dry_run=True)
    assert sorted({j.spec.seed for j in plan.jobs}) == [1, 2]
    assert {j.setting.train["lr"] for j in plan.jobs} == {5e-4}
    assert {j.setting.eval_limit for j in plan.jobs} == {8}
    assert plan.config["overrides"][0] == "train.learning_rate=5e-4"
    assert not out.exists()  # before: the anchor was computed and written by a dry run
    # a bad training value is refused by run name before the anchor is built (it was after)
    for bad, message in ((["train.lr=-1"], "run sft-s0: lr must be a finite number > 0"),
                         (["train.lora_r=0"], "run sft-s0: lora_r must be >= 1"),
                         (["train.lamda=1"], "unknown option 'lamda'"),
                         (["train.lr=1e-3", "train.learning_rate=1e-4"], "'lr' is given twice"),
                         (["seeds"], "expected KEY=VALUE"),
                         (["n.x=1"], "n in .* is not a mapping")):
        with pytest.raises(AsftError, match=message):
            load_plan(path, out, overrides=bad)
        assert not (out / "anchor.safetensors").exists()
    # the command line: overrides after the config, the dry run lists the runs and leaves no folder
    res = subprocess.run([sys.executable, "-m", "asft", "experiment", str(path), "seeds=[3]", "--out", str(out),
                          "--dry-run"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("to do") == 2 and "sft-s3" in res.stdout and not out.exists()
    # a real plan builds the anchor once everything is checked
    load_plan(path, out)
    assert (out / "anchor.safetensors").is_file()


def test_a_dry_run_checks_the_key_of_a_finished_run(toy_world, tmp_path):
    """--dry-run says "done" only for a run made under this plan's key: another key is "redo", and a
    key it cannot compute (the anchor is not built yet) is "done?" with the missing file named."""
    path = _config(tmp_path, toy_world, methods=["sft", {"method": "asft", "lam": 1}])
    out = tmp_path / "out"
    job = load_plan(path, out, dry_run=True).jobs[0]
    job.folder.mkdir(parents=True)
    (job.folder / "row.json").write_text("{}")
    (job.folder / "key.txt").write_text("another key")

    def dry_run() -> str:
        res = subprocess.run([sys.executable, "-m", "asft", "experiment", str(path), "--out", str(out), "--dry-run"],
                             capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "COLUMNS": "400"})
        assert res.returncode == 0, res.stderr
        return res.stdout

    assert run_state(job.spec, job.setting, job.folder) == (
        "done?", f"key unchecked: no {out / 'anchor.safetensors'}")
    assert f"done?  {job.folder}  (key unchecked: no" in dry_run()
    job = load_plan(path, out).jobs[0]  # builds the anchor and the data mix: the key can be computed
    assert run_state(job.spec, job.setting, job.folder) == ("redo", "finished under another key")
    assert f"redo   {job.folder}  (finished under another key)" in dry_run()
    (job.folder / "key.txt").write_text(run_key(job.spec, job.setting))
    assert run_state(job.spec, job.setting, job.folder) == ("done", "")
    listed = dry_run()
    assert listed.count("to do") == 1 and f"done   {job.folder}\n" in listed


def test_a_runs_key_does_not_depend_on_the_methods_run_beside_it(toy_world, tmp_path):
    """`methods=[l2]` on the command line makes the run the whole config makes: the same key (the
    anchor and the safety data are in it either way), so neither call redoes the other's runs."""
    path = _config(tmp_path, toy_world, methods=["sft", {"method": "l2", "lam": 10}, {"method": "asft", "lam": 1},
                                                 {"method": "act-anchor", "lam": 1}])
    keys = {}
    for methods in (None, "[sft, {method: l2, lam: 10}]", "[sft, {method: act-anchor, lam: 1}]",
                    "[sft, {method: asft, lam: 1}]"):
        plan = load_plan(path, tmp_path / "out", overrides=[f"methods={methods}"] if methods else [])
        for job in plan.jobs:
            assert job.setting.anchor is not None and job.setting.train.get("safety_data")
            keys.setdefault(job.spec.name, set()).add(run_key(job.spec, job.setting))
    assert len(keys) == 4 and all(len(k) == 1 for k in keys.values()), keys
    # so a safety data file the config names must exist even when no method of this call reads it
    path = _config(tmp_path, toy_world, methods=["sft"], safety_data="missing.json")
    with pytest.raises(AsftError, match=f"safety_data {tmp_path / 'missing.json'}: file not found"):
        load_plan(path, tmp_path / "out2", dry_run=True)
