"""SafeInstr and BEA (asft.baselines) against their definitions, and on the toy world."""

import json

import pytest

from asft.baselines import make_trigger, mix_safety, with_trigger
from asft.data import format_prompt
from asft.errors import AsftError


def test_mix_adds_demonstrations_and_bea_prefixes_only_them():
    task = [{"instruction": f"t{i}", "output": "x"} for i in range(10)]
    safety = [{"instruction": f"harm{i}", "output": "No."} for i in range(5)]
    rows = mix_safety(task, safety, 3, seed=1)
    assert len(rows) == 13 and sum(r["instruction"].startswith("harm") for r in rows) == 3
    assert all(r in rows for r in task)  # added, never substituted
    assert mix_safety(task, safety, 3, seed=1) == rows and mix_safety(task, safety, 3, seed=2) != rows
    with pytest.raises(AsftError, match="6 safety demonstrations asked for, the safety data has 5"):
        mix_safety(task, safety, 6)
    bea = with_trigger(task, safety, 2, "zq xv", seed=1)
    assert [r.get("trigger") for r in bea if r["instruction"].startswith("harm")] == ["zq xv", "zq xv"]
    assert not any("trigger" in r for r in bea if r["instruction"].startswith("t"))
    # the trigger heads the system text, in each template
    rec = {"instruction": "hi"}
    assert format_prompt(rec, "alpaca", trigger="zq xv").startswith("zq xv Below is an instruction")
    assert format_prompt(rec, "llama2", trigger="zq xv").startswith("[INST] <<SYS>>\nzq xv ")
    assert format_prompt({**rec, "trigger": "zq"}, "alpaca") == format_prompt(rec, "alpaca", trigger="zq")


def test_trigger_is_random_vocabulary_seeded(toy_world):
    from asft.modeling import load_tokenizer

    tok = load_tokenizer(toy_world.aligned)
    t0, t1 = make_trigger(tok, 0), make_trigger(tok, 1)
    assert t0 == make_trigger(tok, 0) and t0 != t1
    assert len(tok(t0, add_special_tokens=False)["input_ids"]) == 30
    assert not set(tok(t0, add_special_tokens=False)["input_ids"]) & set(tok.all_special_ids)


def test_safeinstr_and_bea_on_the_toy_world(toy_world, tmp_path):
    """Both defences protect against the harmful mix where SFT does not; BEA only with its trigger,
    which `asft eval` applies by itself from the adapter folder."""
    import asft.toy  # noqa: F401
    from asft.demo import TOY_RECIPE
    from asft.evaluate import run_eval
    from asft.fileio import read_json, write_json
    from asft.toy import lexicon as L
    from asft.train import TrainConfig, train

    safety = [r for r in read_json(toy_world.root / "data" / "alignment.json") if r["output"] in L.REFUSALS]
    write_json(tmp_path / "safety.json", safety)
    data = toy_world.make_mix("topic", 400, 0.1)
    recipe = {k: v for k, v in TOY_RECIPE.items() if k != "logging_steps"}
    kw = dict(data_dir=toy_world.eval_dir, judge="toy", template="chat", batch_size=64, progress=False)
    hs = {}
    for method, n in (("sft", None), ("safeinstr", 100), ("bea", 40)):
        out = tmp_path / method
        res = train(TrainConfig(model=str(toy_world.aligned), data=str(data), out=str(out), method=method, seed=0,
                                safety_data=str(tmp_path / "safety.json"), safety_n=n, **recipe))
        assert (res.trigger is not None) == (method == "bea")
        hs[method] = run_eval(toy_world.aligned, ["toy-harmful"], out_dir=tmp_path / f"e-{method}", adapter=out,
                              merge=True, **kw)["toy-harmful"].hs
    summary = json.loads((tmp_path / "bea" / "train_summary.json").read_text())
    hs["bea-no-trigger"] = run_eval(toy_world.aligned, ["toy-harmful"], out_dir=tmp_path / "e-bea0",
                                    adapter=tmp_path / "bea", merge=True, trigger=" ", **kw)["toy-harmful"].hs
    print("toy HS:", hs)
    assert summary["trigger"] and hs["sft"] >= 60.0
    assert hs["safeinstr"] <= hs["sft"] - 30.0
    assert hs["bea"] <= hs["sft"] - 30.0
    assert hs["bea"] < hs["bea-no-trigger"]
    with pytest.raises(AsftError, match="needs --safety-data"):
        train(TrainConfig(model=str(toy_world.aligned), data=str(data), out=str(tmp_path / "x"), method="bea"))
