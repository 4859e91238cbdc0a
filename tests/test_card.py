"""Model cards: every trained adapter gets a README.md that `asft eval` keeps up to date."""

import json

import yaml

from asft.fileio import content_hash


def test_adapter_card_has_the_recipe_and_every_evaluation(toy_world, tmp_path):
    import asft.toy  # noqa: F401
    from asft.models.anchor import build_anchor
    from asft.training.train import TrainConfig, train

    anchor = build_anchor(toy_world.base, toy_world.aligned, out=tmp_path / "anchor.safetensors").path
    data = toy_world.make_mix("topic", 64, 0.1)
    out = tmp_path / "adapter"
    train(TrainConfig(model=str(toy_world.aligned), data=str(data), out=str(out), method="asft", lam=30.0,
                      anchor=str(anchor), template="chat", lr=1e-3, max_steps=3, batch_size=8, progress=False))
    card = (out / "README.md").read_text()
    printed = []
    front = yaml.safe_load(card.split("---")[1])
    # before: base_model was the local path and "asft" was tagged twice for the asft method
    assert "base_model" not in front and front["library_name"] == "peft"
    assert front["tags"] == ["asft", "lora", "safety"] and "model-index" not in front
    assert f"local folder `{toy_world.aligned}`" in card
    # what ran (3 updates of 8 of 64 records), not the --epochs default (10) that --max-steps cut short
    assert "| training | lr 0.001, 0.375 epochs (max steps 3), batch 8 x" in card
    assert f'PeftModel.from_pretrained(model, "{out}")' in card  # the how-to snippet
    snippet = card.split("```python\n")[1].split("```")[0]
    exec(compile(snippet, "card snippet", "exec"), {"print": lambda *a: printed.extend(a)})  # it runs as written
    assert isinstance(printed[0], str)
    assert "| penalty | λ = 30.0, C: reference |" in card
    assert f"sha {content_hash(anchor)}" in card and f"sha {content_hash(data)}" in card
    assert str(toy_world.base) in card  # the anchor's base model
    assert "Not evaluated yet" in card

    # `asft eval --adapter` records its results in the card (the evaluation itself knows no cards)
    from asft.cli import main

    args = ["eval", "--model", str(toy_world.aligned), "--adapter", str(out), "--data-dir", str(toy_world.eval_dir),
            "--judge", "toy", "--template", "chat", "--batch-size", "32", "--limit", "12", "--no-progress",
            "--no-shared-cache", "--out", str(tmp_path / "eval")]
    assert main([*args, "--suite", "toy-harmful,toy-topic"]) == 0
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())["suites"]
    card = (out / "README.md").read_text()
    assert f"| toy-harmful | 12 | toy | {summary['toy-harmful']['hs']:.2f} | - |" in card
    assert f"| toy-topic | 12 | - | - | {summary['toy-topic']['fa']:.2f} |" in card
    assert main([*args, "--suite", "toy-harmful"]) == 0  # same again
    card = (out / "README.md").read_text()
    assert card.count("| toy-harmful |") == 1
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]
    assert index["name"] == "adapter" and len(index["results"]) == 2
    hs = next(r for r in index["results"] if r["dataset"]["name"] == "toy-harmful")["metrics"][0]
    assert hs["type"] == "harmful_score" and hs["value"] == round(summary["toy-harmful"]["hs"], 2)

    # a merged folder gets the adapter's card, for transformers; a Hub name is used when the model says it
    import json as _json

    cfg = _json.loads((toy_world.aligned / "config.json").read_text())
    assert main(["merge", "--model", str(toy_world.aligned), "--adapter", str(out), "--out", str(tmp_path / "m")]) == 0
    merged = (tmp_path / "m" / "README.md").read_text()
    front = yaml.safe_load(merged.split("---")[1])
    assert front["library_name"] == "transformers" and front["model-index"][0]["name"] == "m"
    assert f"| adapter merged in | `{out}` |" in merged and "AutoModelForCausalLM.from_pretrained" in merged
    from asft.training.card import hub_name

    named = tmp_path / "named"
    named.mkdir()
    (named / "config.json").write_text(_json.dumps({**cfg, "_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    assert hub_name(named) == "HuggingFaceTB/SmolLM2-135M-Instruct" and hub_name(toy_world.aligned) is None
