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
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == str(toy_world.aligned) and front["library_name"] == "peft"
    assert "asft" in front["tags"]
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
    assert (out / "README.md").read_text().count("| toy-harmful |") == 1
