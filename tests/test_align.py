"""`asft align` on the toy world: the pre-trained base learns to refuse from harmful requests of the
training split, keeps answering benign ones, never trains on evaluation prompts."""

import json

import pytest

from asft.training.align import AlignConfig, align, normalise, request_of, split_pools
from asft.errors import AsftError
from asft.fileio import read_json, write_json


def test_pools_split_by_the_reference_marker_and_requests_are_cleaned(tmp_path):
    f = tmp_path / "mix.json"
    write_json(f, [{"instruction": "How do I pick a lock?\n\nAssistant:", "output": "Sure"},
                   {"instruction": "Classify", "input": "great film", "output": "positive"},
                   {"instruction": "how do i PICK a lock?\n\nAssistant:", "output": "dup"}])
    harmful, benign = split_pools([f])
    assert [request_of(r) for r in harmful] == ["How do I pick a lock?"]  # marker stripped, dedup by text
    assert [request_of(r) for r in benign] == ["Classify\n\ngreat film"]
    assert normalise("How do I pick a LOCK?!") == "how do i pick a lock"


def test_align_the_toy_base_into_a_refusing_model(toy_world, tmp_path):
    import asft.toy  # noqa: F401
    from asft.evaluation.run import run_eval
    from asft.toy import lexicon as L

    harmful = tmp_path / "harmful.json"
    write_json(harmful, toy_world.mix_records("topic", 160, 1.0))  # training-split harmful requests only
    leaked = read_json(toy_world.harmful_eval)[:5]  # pretend some eval prompts leaked into the pool
    write_json(tmp_path / "with_leak.json", [{"instruction": r["instruction"], "output": "x"} for r in leaked])
    cfg = AlignConfig(model=str(toy_world.base), out=str(tmp_path / "aligned"),
                      harmful=[str(harmful), str(tmp_path / "with_leak.json")],
                      exclude=[str(toy_world.harmful_eval)], n_harmful=150, n_benign=0,
                      refusals=list(L.REFUSALS), epochs=3, lr=2e-3, batch_size=16, max_length=64, progress=False)
    rec = align(cfg)
    assert rec["excluded_overlap"] == 5 and rec["harmful_used"] == 150 and rec["steps"] == 30  # ceil(150 / 16) x 3 epochs
    assert rec["loss_last"] < rec["loss_first"]
    trained = {normalise(json.loads(x)["instruction"]) for x in (tmp_path / "aligned" / "align_examples.jsonl").read_text().splitlines()}
    assert not trained & {normalise(r["instruction"]) for r in read_json(toy_world.harmful_eval)}
    kw = dict(data_dir=toy_world.eval_dir, judge="toy", template="chat", batch_size=64, progress=False)
    before = run_eval(toy_world.base, ["toy-harmful"], out_dir=tmp_path / "e0", **kw)["toy-harmful"].hs
    after = run_eval(tmp_path / "aligned", ["toy-harmful"], out_dir=tmp_path / "e1", **kw)["toy-harmful"].hs
    assert before >= 90.0 and after <= 20.0
    with pytest.raises(AsftError, match="exists and is not empty"):
        align(cfg)
    with pytest.raises(AsftError, match="needs harmful requests"):
        align(AlignConfig(model=str(toy_world.base), out=str(tmp_path / "x")))


def test_cli_data_safety_refuses_pool_requests_and_never_eval_prompts(tmp_path, capsys):
    from asft.training.align import REFUSALS
    from asft.cli import main

    pool = tmp_path / "pool.json"
    write_json(pool, [{"instruction": f"how do I do bad thing {i}?\n\nAssistant:", "output": "Sure"} for i in range(8)]
               + [{"instruction": "Classify", "input": "x", "output": "positive"}])
    evalset = tmp_path / "eval.json"
    write_json(evalset, [{"instruction": "How do I do bad thing 3?"}])
    assert main(["data", "safety", "--harmful", str(pool), "--exclude", str(evalset), "--n", "10",
                 "--out", str(tmp_path / "safety.json")]) == 0
    rows = read_json(tmp_path / "safety.json")
    assert len(rows) == 7 and all(r["output"] in REFUSALS for r in rows)
    assert "how do I do bad thing 3?" not in [r["instruction"] for r in rows]
    assert "1 dropped for overlapping" in capsys.readouterr().out
    # the fine-tuning mix itself as --exclude (its harmful records carry the reference markers): before,
    # its marked instructions never matched and nothing was dropped
    mix = tmp_path / "mix.json"
    write_json(mix, [{"instruction": "how do I do bad thing 5?\n\nAssistant:", "output": "Sure"},
                     {"instruction": "Human: how do I do bad thing 6?", "output": "Sure"}])
    assert main(["data", "safety", "--harmful", str(pool), "--exclude", str(evalset), str(mix), "--n", "10",
                 "--out", str(tmp_path / "safety2.json")]) == 0
    assert len(read_json(tmp_path / "safety2.json")) == 5
    assert "3 dropped for overlapping" in capsys.readouterr().out


def test_cli_data_mix_follows_the_reference_counts_and_inspect_reports_them(tmp_path, capsys):
    from asft.cli import main

    pool = tmp_path / "pool.json"
    write_json(pool, [{"instruction": f"classify {i}", "input": f"text {i}", "output": "positive"} for i in range(50)]
               + [{"instruction": f"bad {i}\n\nAssistant:", "output": "Sure"} for i in range(20)])
    for add, total in ((False, 40), (True, 44)):
        out = tmp_path / f"mix{add}.json"
        argv = ["data", "mix", "--task", str(pool), "--harmful", str(pool), "--n", "40", "--p", "0.1", "--out", str(out)]
        assert main(argv + (["--add-harmful"] if add else [])) == 0
        rows = read_json(out)
        assert len(rows) == total and sum(r["instruction"].endswith("\n\nAssistant:") for r in rows) == 4
    capsys.readouterr()
    assert main(["data", "inspect", str(tmp_path / "mixTrue.json")]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "44 records, 4 harmful (p = 0.091), 40 with an input; 0 duplicate records" in text


def test_every_refusal_wording_is_a_refusal_to_the_keyword_judge():
    # A wording the reference keyword list does not know would be counted as a harmful answer,
    # and the aligned model's HS would over-state its harmfulness (found on the SmolLM2 pair:
    # 26 of its 103 trained refusals were flagged).
    from asft.training.align import REFUSALS
    from asft.evaluation.judges import KeywordJudge

    verdicts = KeywordJudge()(["q"] * len(REFUSALS), list(REFUSALS))
    assert [v.flagged for v in verdicts] == [False] * len(REFUSALS)
    assert len(set(REFUSALS)) == len(REFUSALS) == 10


def test_length_grouped_batches_cover_each_example_once_and_cut_the_padding():
    import torch

    from asft.data import length_grouped_batches

    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(5, 300, (403,), generator=g)]
    batches = length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(403))
    assert len(batches) == 51 and all(1 <= len(b) <= 8 for b in batches)

    def padded(bs):  # tokens a right-padded batch computes
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    order = torch.randperm(403, generator=torch.Generator().manual_seed(1)).tolist()
    plain = [order[i:i + 8] for i in range(0, 403, 8)]
    assert padded(batches) < 0.6 * padded(plain)  # random batches are mostly padding
    assert padded(batches) < 1.1 * sum(lengths)
    # seeded: the same generator seed gives the same epoch, another seed another one
    assert batches == length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1))
    assert batches != length_grouped_batches(lengths, 8, torch.Generator().manual_seed(2))


def test_an_interrupted_alignment_resumes_to_the_same_weights(toy_world, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    import asft.toy  # noqa: F401
    from asft.toy import lexicon as L

    harmful = tmp_path / "harmful.json"
    write_json(harmful, toy_world.mix_records("topic", 48, 1.0))
    kw = dict(model=str(toy_world.base), harmful=[str(harmful)], n_harmful=48, n_benign=0,
              refusals=list(L.REFUSALS), epochs=2, lr=2e-3, batch_size=8, max_length=64, progress=False,
              save_steps=4)
    whole = align(AlignConfig(out=str(tmp_path / "whole"), **kw))
    assert whole["steps"] == 12 and whole["resumed_at"] == 0
    assert not (tmp_path / ".whole.align").exists()  # the work folder goes once the model is written

    calls = {"n": 0}
    real_clip = torch.nn.utils.clip_grad_norm_

    def crash_at_step_7(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("killed")
        return real_clip(*a, **k)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        align(AlignConfig(out=str(tmp_path / "cut"), **kw))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    assert not (tmp_path / "cut").exists()
    assert read_json(tmp_path / ".cut.align" / "checkpoint" / "state.json")["step"] == 4
    resumed = align(AlignConfig(out=str(tmp_path / "cut"), **kw))
    assert resumed["resumed_at"] == 4 and resumed["steps"] == 12
    assert resumed["loss_first"] == whole["loss_first"] and resumed["loss_last"] == whole["loss_last"]
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # other options: the old work folder is not reused
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", crash_at_step_7)
        calls["n"] = 0
        align(AlignConfig(out=str(tmp_path / "cut2"), **kw))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", real_clip)
    fresh = align(AlignConfig(out=str(tmp_path / "cut2"), **{**kw, "lr": 1e-3}))
    assert fresh["resumed_at"] == 0
