import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from _models import make_llama_pair
from asft.models.checkpoints import ModelFolder, SafetensorsWriter, check_pair, fingerprint
from asft.errors import AsftError

torch.set_num_threads(1)


def _state(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_reads_names_shapes_dtypes_and_tensors(pair):
    base, _ = pair
    m = ModelFolder(base)
    ref = _state(base)
    assert m.tensor_names() == sorted(ref)
    assert m.config["model_type"] == "llama"
    assert m.shape("model.layers.0.self_attn.k_proj.weight") == (32, 64)  # GQA: 2 kv heads of 16
    assert m.dtype("model.norm.weight") == torch.float32
    for name, t in ref.items():
        assert torch.equal(m.get_tensor(name), t)
    assert list(m.shards()) == ["model.safetensors"]


def test_sharded_folder_reads_the_same_tensors(pair, sharded_pair):
    single, sharded = ModelFolder(pair[1]), ModelFolder(sharded_pair[1])
    shards = sharded.shards()
    assert len(shards) >= 2 and (sharded.path / "model.safetensors.index.json").is_file()
    grouped = [n for names in shards.values() for n in names]
    assert sorted(grouped) == single.tensor_names()  # every tensor in exactly one shard
    streamed = dict(sharded.iter_tensors())
    assert list(streamed) == grouped  # shard by shard, in file order
    for name in single.tensor_names():
        assert torch.equal(streamed[name], single.get_tensor(name))
    wanted = ["lm_head.weight", "model.layers.1.self_attn.v_proj.weight"]
    assert sorted(n for n, _ in sharded.iter_tensors(wanted)) == wanted


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_folder_config_and_weights(tmp_path, pair):
    with pytest.raises(AsftError, match="nowhere: model folder not found"):
        ModelFolder(tmp_path / "nowhere")
    d = _copy(pair[0], tmp_path / "noconfig")
    (d / "config.json").unlink()
    with pytest.raises(AsftError, match=f"{d}: no config.json"):
        ModelFolder(d)
    g = tmp_path / "gguf_only"  # what a user gets from a GGUF wheel: say what it is and what to run
    g.mkdir()
    (g / "SmolLM2-135M-Instruct.Q4_1.gguf").write_bytes(b"GGUF")
    with pytest.raises(AsftError, match=r"gguf_only: holds a GGUF file \(SmolLM2-135M-Instruct.Q4_1.gguf\).*asft import-gguf"):
        ModelFolder(g)
    d = _copy(pair[0], tmp_path / "noweights")
    (d / "model.safetensors").unlink()
    with pytest.raises(AsftError, match=f"{d}: no \\*.safetensors weights"):
        ModelFolder(d)


def test_pickle_weights_are_refused(tmp_path, pair):
    d = _copy(pair[0], tmp_path / "pickled")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(AsftError) as e:
        ModelFolder(d)
    msg = str(e.value)
    assert str(d) in msg and "pytorch_model.bin" in msg and "safetensors only" in msg


def test_malformed_index_and_missing_shard(tmp_path, sharded_pair):
    d = _copy(sharded_pair[0], tmp_path / "badjson")
    (d / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(AsftError, match=f"{d}/model.safetensors.index.json: malformed JSON"):
        ModelFolder(d)
    d = _copy(sharded_pair[0], tmp_path / "nomap")
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(AsftError, match=f"{d}/model.safetensors.index.json: malformed index"):
        ModelFolder(d)
    d = _copy(sharded_pair[0], tmp_path / "noshard")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(AsftError, match=f"{d}/model.safetensors.index.json: names shard '{shard.name}', which is missing"):
        ModelFolder(d)


def test_an_index_cannot_name_shards_outside_its_folder(tmp_path, sharded_pair):
    """A folder's index that points a tensor at a file elsewhere (a shard of another model, a path that
    climbs out) is refused by name, by every command that reads a model (they all go through here)."""
    from asft.models.modeling import load_model

    d = _copy(sharded_pair[0], tmp_path / "outside")
    other = _copy(sharded_pair[0], tmp_path / "other")
    index = d / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    first = sorted(set(obj["weight_map"].values()))[0]
    for name, shard in list(obj["weight_map"].items()):
        if shard == first:
            obj["weight_map"][name] = f"../{other.name}/{first}"
    index.write_text(json.dumps(obj))
    (d / first).unlink()
    for read in (ModelFolder, load_model):
        with pytest.raises(AsftError, match=rf"names shard '\.\./other/{first}', which is not a file name inside"):
            read(d)


def test_index_listing_a_tensor_its_shard_lacks(tmp_path, sharded_pair):
    d = _copy(sharded_pair[0], tmp_path / "wrongmap")
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    first, second = sorted(set(idx["weight_map"].values()))[:2]
    moved = next(n for n, s in idx["weight_map"].items() if s == first)
    idx["weight_map"][moved] = second
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(AsftError, match=f"lists '{moved}' in {second}, which does not contain it"):
        ModelFolder(d)


def test_corrupt_shard_names_the_file(tmp_path, pair):
    d = _copy(pair[0], tmp_path / "corrupt")
    (d / "model.safetensors").write_bytes(b"\x05")
    with pytest.raises(AsftError, match=f"{d}/model.safetensors: not a valid safetensors file"):
        ModelFolder(d)


def test_fingerprint_is_stable_layout_independent_and_sensitive(tmp_path, pair, sharded_pair):
    base, aligned = pair
    fp = fingerprint(base)
    assert len(fp) == 64 and fp == fingerprint(ModelFolder(base))  # nothing changed: same digest
    assert fingerprint(sharded_pair[0]) == fp  # same weights (same seed), split into shards
    assert fingerprint(aligned) != fp
    # One element of one tensor changes -> the digest changes.
    d = _copy(base, tmp_path / "edited")
    state = load_file(d / "model.safetensors")
    state["model.layers.1.self_attn.q_proj.weight"][0, 0] += 1e-3
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    assert fingerprint(d) != fp
    # An architecture-defining config value changes -> the digest changes.
    d2 = _copy(base, tmp_path / "reconfigured")
    cfg = json.loads((d2 / "config.json").read_text())
    cfg["num_attention_heads"] = 8
    (d2 / "config.json").write_text(json.dumps(cfg))
    assert fingerprint(d2) != fp


def test_check_pair(tmp_path, pair):
    base, aligned = pair
    check_pair(base, aligned)
    other_base, _ = make_llama_pair(tmp_path / "wide", vocab=256)
    with pytest.raises(AsftError) as e:
        check_pair(base, other_base)
    msg = str(e.value)
    assert f"{other_base} does not match {base}" in msg and "vocab_size" in msg
    # Same config, one tensor missing.
    d = _copy(aligned, tmp_path / "headless")
    state = load_file(d / "model.safetensors")
    del state["lm_head.weight"]
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AsftError, match=f"{d} does not match {base}: tensor 'lm_head.weight' is only in the base model"):
        check_pair(base, d)
    # Same config, one shape differs.
    state = load_file(aligned / "model.safetensors")
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(130, 64)
    d = _copy(aligned, tmp_path / "reshaped")
    save_file(state, d / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(AsftError, match=r"model.layers.0.mlp.up_proj.weight has shape \(130, 64\), base has \(128, 64\)"):
        check_pair(base, d)


def test_streaming_writer_round_trips(tmp_path):
    tensors = {
        "a": torch.randn(3, 5, generator=torch.Generator().manual_seed(0)),
        "b": torch.arange(7, dtype=torch.int64),
        "c": torch.tensor(2.5),  # 0-d
        "d": torch.randn(4, 2, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16),
    }
    path = tmp_path / "x.safetensors"
    with open(path, "wb") as f:
        w = SafetensorsWriter(f, [(n, t.dtype, tuple(t.shape)) for n, t in tensors.items()], {"k": "v"})
        for n, t in tensors.items():
            w.write(n, t)
        w.close()
    back = load_file(path)
    assert set(back) == set(tensors)
    for n, t in tensors.items():
        assert back[n].dtype == t.dtype and torch.equal(back[n], t)
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        assert f.metadata() == {"k": "v"}


def test_streaming_writer_enforces_declared_order(tmp_path):
    with open(tmp_path / "y.safetensors", "wb") as f:
        w = SafetensorsWriter(f, [("a", torch.float32, (2,)), ("b", torch.float32, (3,))])
        with pytest.raises(ValueError, match="expected a"):
            w.write("b", torch.zeros(3))
        w.write("a", torch.zeros(2))
        with pytest.raises(ValueError, match="only 1 of 2"):
            w.close()
