"""Safety landscape: directions, exact restore, basin measures, and a real scan of the toy world."""

import json

import pytest
import torch

from asft.errors import AsftError
from asft.experiments.landscape import (Perturbation, alignment_direction, basin_width, coordinates, random_direction,
                            run_landscape, target_weights, visage)


def test_basin_width_and_visage_on_known_curves():
    alphas = [-0.5, -0.25, 0.0, 0.25, 0.5]
    assert basin_width(alphas, [80, 12, 5, 10, 40]) == {"neg": 0.25, "pos": 0.25, "min": 0.25}
    assert basin_width(alphas, [5, 5, 5, 5, 5]) == {"neg": 0.5, "pos": 0.5, "min": 0.5}
    assert basin_width(alphas, [50, 5, 5, 90, 5]) == {"neg": 0.25, "pos": 0.0, "min": 0.0}  # stops at the first jump
    # VISAGE, as llm-landscape's safety_avg: saturated tails (HS 100) left out, mean of 100 - HS
    assert visage([100, 100, 40, 0, 20, 100, 100]) == pytest.approx((60 + 100 + 80) / 3)
    assert visage([10, 0, 10]) == pytest.approx((90 + 100 + 90) / 3)


@pytest.fixture(scope="module")
def toy(toy_world, tmp_path_factory):
    from asft.models.anchor import build_anchor, load_anchor

    root = tmp_path_factory.mktemp("landscape")
    build_anchor(toy_world.base, toy_world.aligned, out=root / "anchor.safetensors")
    return toy_world, load_anchor(root / "anchor.safetensors"), root / "anchor.safetensors"


def _models(world):
    from asft.models.modeling import load_model

    return load_model(world.aligned, dtype="float32", device="cpu"), load_model(world.base, dtype="float32", device="cpu")


def test_directions_are_orthogonal_scaled_and_reach_the_base(toy):
    world, anchor, _ = toy
    aligned, base = _models(world)
    w = target_weights(aligned, sorted(anchor.entries))
    assert len(w) == 4  # q_proj, v_proj of 2 layers
    d1 = alignment_direction(anchor, w, "layer")
    d2 = random_direction(w, seed=3, orthogonal_to=d1, norm="layer")
    for m in w:
        assert float(d1[m].norm()) == pytest.approx(float(w[m].norm()), rel=1e-5)  # layer normalisation
        assert float(d2[m].norm()) == pytest.approx(float(w[m].norm()), rel=1e-5)
        cos = float((d1[m].double() * d2[m].double()).sum() / (d1[m].double().norm() * d2[m].double().norm()))
        assert abs(cos) < 1e-6  # truly orthogonal, module by module
    assert all(torch.equal(a, b) for a, b in zip(random_direction(w, 3, d1).values(), d2.values()))  # seeded
    raw = alignment_direction(anchor, w, "none")
    base_w = dict(base.named_modules())
    with Perturbation(w) as p:
        p.set([-1.0], [raw])  # alpha = -1 along the raw alignment direction: the base model's weights
        for m in w:
            torch.testing.assert_close(w[m], base_w[m].weight, rtol=0, atol=1e-6)


def test_perturbation_restores_every_bit_also_after_an_exception(toy):
    world, anchor, _ = toy
    aligned, _ = _models(world)
    before = {k: v.clone() for k, v in aligned.state_dict().items()}
    w = target_weights(aligned, sorted(anchor.entries))
    d1 = alignment_direction(anchor, w)
    with pytest.raises(RuntimeError, match="judge crashed"):
        with Perturbation(w) as p:
            p.set([0.37], [d1])
            assert not torch.equal(next(iter(w.values())), before[next(iter(w)) + ".weight"])
            raise RuntimeError("judge crashed")
    after = aligned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_adapter_coordinates_recover_a_known_mix(toy):
    world, anchor, _ = toy
    aligned, _ = _models(world)
    w = target_weights(aligned, sorted(anchor.entries))
    d1, d2 = alignment_direction(anchor, w), None
    d2 = random_direction(w, 1, d1)
    update = {m: 0.3 * d1[m] - 0.07 * d2[m] for m in w}
    a, b = coordinates(update, d1, d2)
    assert (a, b) == (pytest.approx(0.3, abs=1e-5), pytest.approx(-0.07, abs=1e-5))


def test_toy_scan_writes_curves_measures_and_pictures(toy, tmp_path):
    import asft.toy  # noqa: F401

    world, _, anchor_path = toy
    with pytest.raises(AsftError, match="unknown direction"):
        run_landscape(world.aligned, anchor_path, tmp_path / "x", dirs=["sideways"], data_dir=world.eval_dir)
    doc = run_landscape(world.aligned, anchor_path, tmp_path / "ls", steps=4, two_d=True, data_dir=world.eval_dir,
                        suite="toy-harmful", judge="toy", limit=24, span=(-1.0, 1.0), norm="none")
    saved = json.loads((tmp_path / "ls" / "landscape.json").read_text())
    assert saved["one_d"]["align"]["alpha"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    hs = saved["one_d"]["align"]["hs"]
    assert hs[2] <= 10.0  # the aligned model refuses
    assert all(0.0 <= h <= 100.0 for h in hs)
    assert set(saved["one_d"]) == {"align", "random"} and len(saved["two_d"]["hs"]) == 5
    assert saved["two_d"]["hs"][2][2] == hs[2]  # the plane's centre is the model itself
    assert (tmp_path / "ls" / "landscape_1d.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "ls" / "landscape_2d.png").read_bytes()[:4] == b"\x89PNG"
    assert any("basin along the alignment direction" in line for line in doc["summary"])
    assert (tmp_path / "ls" / "summary.txt").read_text().splitlines() == doc["summary"]
