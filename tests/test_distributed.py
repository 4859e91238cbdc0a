"""Several processes on CPU (gloo): `torchrun --nproc_per_node 2 -m asft train` with half the batch per
process, plain data parallel or `--fsdp` (FSDP2), equals one process on the whole batch (losses and
adapter); rank 0 alone writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def _train(args, out, procs, batch, extra_path=None):
    path = str(REPO / "src") + (os.pathsep + extra_path if extra_path else "")
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "ASFT_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
                 "--master_port", str(29500 + os.getpid() % 1000)] if procs > 1 else [sys.executable])
    cmd = launcher + ["-m", "asft", "train", *args, "--batch-size", str(batch), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_two_gloo_processes_equal_one_process_on_the_global_batch(toy_world, tmp_path):
    data = toy_world.make_mix("topic", 64, 0.1)
    args = ["--model", str(toy_world.aligned), "--data", str(data), "--method", "l2", "--lam", "10",
            "--template", "chat", "--lr", "1e-3", "--max-steps", "4", "--lora-dropout", "0",
            "--logging-steps", "1", "--quiet", "--threads", "1"]
    one = _train(args, tmp_path / "one", 1, 8)
    two = _train(args, tmp_path / "two", 2, 4)
    steps = lambda log: [r for r in log if "task_loss" in r and "step" in r and "train_runtime" not in r]  # noqa: E731
    assert len(steps(two)) == len(steps(one)) == 4  # one writer: no line twice
    for a, b in zip(steps(one), steps(two)):
        # the logged task loss is the global batch's, not multiplied by the world size
        assert abs(a["task_loss"] - b["task_loss"]) < 1e-4 * abs(a["task_loss"])
        assert abs(a["penalty"] - b["penalty"]) <= 1e-4 * abs(a["penalty"]) + 1e-9
    wa = load_file(tmp_path / "one" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.parametrize("method", ["hidden-anchor", "nullspace"])
def test_safety_data_anchors_under_two_gloo_processes_equal_one_process(toy_world, tmp_path, method):
    """A per-step anchor (its own forward on safety prompts, once per update) and the null-space
    projection (an optimiser post-step hook) under DDP: the same losses, penalty and adapter."""
    from asft.fileio import write_json

    data = toy_world.make_mix("topic", 64, 0.1)
    write_json(tmp_path / "safety.json", toy_world.safety_records()[:40])
    args = ["--model", str(toy_world.aligned), "--data", str(data), "--method", method, "--lam", "1",
            "--safety-data", str(tmp_path / "safety.json"), "--template", "chat", "--lr", "1e-3",
            "--max-steps", "4", "--lora-dropout", "0", "--logging-steps", "1", "--quiet", "--threads", "1"]
    one = _train(args, tmp_path / "one", 1, 8)
    two = _train(args, tmp_path / "two", 2, 4)
    steps = lambda log: [r for r in log if "task_loss" in r and "step" in r and "train_runtime" not in r]  # noqa: E731
    assert len(steps(two)) == len(steps(one)) == 4
    for a, b in zip(steps(one), steps(two)):
        assert abs(a["task_loss"] - b["task_loss"]) < 1e-4 * abs(a["task_loss"])
        assert abs(a["penalty"] - b["penalty"]) <= 1e-4 * abs(a["penalty"]) + 1e-9
    wa = load_file(tmp_path / "one" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter_model.safetensors")
    # AdamW divides by sqrt(v): in coordinates whose gradient is near zero, the float-order difference of
    # an all-reduce is amplified (2 of 512 elements differ by 3e-5 for hidden-anchor), so the adapters
    # are compared to 0.1 x lr; without the method's term the adapter moves by far more (checked below)
    tol = dict(rtol=1e-3, atol=1e-4)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], **tol)
    if method == "hidden-anchor":
        assert steps(one)[-1]["penalty"] > 0
        free = ["--method" if a == "--method" else ("sft" if a == method else a) for a in args]
        _train(free, tmp_path / "free", 1, 8)  # the same run without the anchor's gradient
        wf = load_file(tmp_path / "free" / "adapter_model.safetensors")
        assert any(not torch.allclose(wa[k], wf[k], **tol) for k in wa)


def test_penalty_methods_refuse_parameter_sharding():
    import pytest

    from asft.errors import AsftError
    from asft.training.train import TrainConfig, check_not_sharded, sharded_setup

    assert sharded_setup({}) is None
    assert sharded_setup({"ACCELERATE_USE_FSDP": "true"}) == "FSDP"
    assert sharded_setup({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}) is None
    zero3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}
    for method in ("asft", "l2", "lisa"):
        with pytest.raises(AsftError, match=f"method {method} under DeepSpeed ZeRO-3: the penalty reads whole"):
            check_not_sharded(TrainConfig(method=method), zero3)
    check_not_sharded(TrainConfig(method="sft"), zero3)  # no penalty: nothing to lose
    check_not_sharded(TrainConfig(method="asft"), {})


def _steps(log):
    return [r for r in log if "task_loss" in r and "step" in r and "train_runtime" not in r]


@pytest.mark.parametrize("method, extra", [("asft", []), ("l2", []), ("l2", ["--gradient-checkpointing"]),
                                           ("act-anchor", [])])
def test_fsdp_two_processes_equal_one_process_on_the_global_batch(toy_world, tmp_path, method, extra):
    """`--fsdp`: every decoder layer and every LoRA weight sharded with FSDP2 over 2 gloo processes,
    batch 4 each; the same logged task loss and penalty per step (rel. 1e-4) and the same adapter
    (rtol 1e-4) as one process with batch 8, saved once by rank 0 as a plain PEFT adapter. Under
    activation checkpointing too: the penalty is read outside the forward, so the recomputed forward
    does not count it twice."""
    from asft.models.anchor import build_anchor

    data = toy_world.make_mix("topic", 64, 0.1)
    args = ["--model", str(toy_world.aligned), "--data", str(data), "--method", method, "--lam", "10",
            "--template", "chat", "--lr", "1e-3", "--max-steps", "4", "--lora-dropout", "0",
            "--logging-steps", "1", "--quiet", "--threads", "1", *extra]
    if method == "asft":
        args += ["--anchor", str(build_anchor(toy_world.base, toy_world.aligned, out=tmp_path / "a.safetensors").path)]
    if method == "act-anchor":  # its statistics from a forward pass of the (sharded) model on safety data
        from asft.fileio import write_json

        write_json(tmp_path / "safety.json", toy_world.safety_records()[:40])
        args += ["--safety-data", str(tmp_path / "safety.json")]
    one = _train(args, tmp_path / "one", 1, 8)
    two = _train([*args, "--fsdp"], tmp_path / "two", 2, 4)
    assert len(_steps(two)) == len(_steps(one)) == 4
    for a, b in zip(_steps(one), _steps(two)):
        assert abs(a["task_loss"] - b["task_loss"]) < 1e-4 * abs(a["task_loss"])
        assert abs(a["penalty"] - b["penalty"]) <= 1e-4 * abs(a["penalty"]) + 1e-9
    assert _steps(one)[-1]["penalty"] > 0
    sharded = json.loads((tmp_path / "two" / "train_summary.json").read_text())["fsdp"]
    # every parameter is a shard: the decoder layers', the embeddings' and each LoRA A and B
    assert sharded["world_size"] == 2 and sharded["decoder_layers"] >= 2 and sharded["lora_modules"] >= 4
    assert sharded["sharded_parameters"] == sharded["parameters"]
    assert json.loads((tmp_path / "one" / "train_summary.json").read_text())["fsdp"] is None
    wa = load_file(tmp_path / "one" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(toy_world.aligned), tmp_path / "two")  # loads
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_fsdp_comparison_fails_when_the_penalty_gradient_is_dropped(toy_world, tmp_path):
    """The check above can fail: the l2 penalty computed on detached (gathered) weights logs the same
    value but gives the sharded LoRA weights no gradient, and its adapter is not the l2 run's."""
    data = toy_world.make_mix("topic", 64, 0.1)
    args = ["--model", str(toy_world.aligned), "--data", str(data), "--lam", "10", "--template", "chat",
            "--lr", "1e-3", "--max-steps", "4", "--lora-dropout", "0", "--logging-steps", "1", "--quiet",
            "--threads", "1"]
    one = _train([*args, "--method", "l2"], tmp_path / "one", 1, 8)
    env_path = str(REPO / "tests")
    two = _train([*args, "--method", "l2-detached", "--plugin", "plugin_detached", "--fsdp"], tmp_path / "two", 2, 4,
                 extra_path=env_path)
    assert abs(_steps(one)[0]["penalty"] - _steps(two)[0]["penalty"]) <= 1e-4 * _steps(one)[0]["penalty"]
    wa = load_file(tmp_path / "one" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter_model.safetensors")
    assert any(not torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-6) for k in wa)


def test_fsdp_refusals_are_one_line(toy_world, tmp_path):
    from asft.errors import AsftError
    from asft.training.train import TrainConfig, check_fsdp

    with pytest.raises(AsftError, match="method lisa cannot train under --fsdp: its alternating states"):
        check_fsdp(TrainConfig(method="lisa"), 2)
    with pytest.raises(AsftError, match="--fsdp with --save-steps"):
        check_fsdp(TrainConfig(method="l2", save_steps=5), 2)
    check_fsdp(TrainConfig(method="asft"), 2)
    check_fsdp(TrainConfig(method="sft"), 2)


def test_accelerate_asking_for_two_processes_but_starting_one_says_so(toy_world, tmp_path):
    """Before: an accelerate config of 2 CPU processes (MULTI_CPU) ran `asft train` as one, silently."""
    from asft.training.fsdp import launcher_alone

    cfg = tmp_path / "acc.yaml"
    cfg.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_CPU\nnum_machines: 1\n"
                   "num_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n")
    by_acc = {"ACCELERATE_MIXED_PRECISION": "no"}
    assert "asked for 2 processes" in launcher_alone(by_acc, ["accelerate", "launch", "--config_file", str(cfg)], None)
    assert "asked for 3 processes" in launcher_alone(by_acc, ["x", "--num_processes", "3"], None)
    assert launcher_alone(by_acc, ["accelerate", "launch"], cfg) is not None  # the default config file
    assert launcher_alone({}, ["accelerate", "launch", "--config_file", str(cfg)], None) is None  # not accelerate
    assert launcher_alone({**by_acc, "WORLD_SIZE": "2"}, ["--num_processes", "2"], None) is None  # really 2
    # end to end: accelerate launch with that config runs one process, and asft says so in one line
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "-m", "asft",
                           "train", "--model", str(toy_world.aligned), "--data", str(toy_world.make_mix("topic", 64, 0.1)),
                           "--method", "sft", "--template", "chat", "--max-steps", "1", "--quiet", "--threads", "1",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if "accelerate launch asked for 2 processes" in x]
    assert len(lines) == 1 and "torchrun --nproc_per_node 2" in lines[0]


def test_accelerate_fsdp_plugin_runs_asfts_fsdp2_for_a_penalty_method(toy_world, tmp_path):
    """Before: `accelerate launch` with an FSDP config refused l2 / asft. Now asft shards the model itself
    (as --fsdp, one line says so) and the run equals one process on the whole batch."""
    cfg = tmp_path / "fsdp.yaml"
    cfg.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: FSDP\nfsdp_config:\n  fsdp_version: 2\n"
                   "num_machines: 1\nnum_processes: 2\nmachine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\n"
                   f"main_process_port: {29600 + os.getpid() % 300}\n")
    data = toy_world.make_mix("topic", 64, 0.1)
    args = ["--model", str(toy_world.aligned), "--data", str(data), "--method", "l2", "--lam", "10",
            "--template", "chat", "--lr", "1e-3", "--max-steps", "4", "--lora-dropout", "0",
            "--logging-steps", "1", "--quiet", "--threads", "1"]
    one = _train(args, tmp_path / "one", 1, 8)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "ASFT_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg), "-m", "asft",
                           "train", *args, "--batch-size", "4", "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "asft shards the model itself (FSDP2, as --fsdp" in proc.stderr
    two = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    for a, b in zip(_steps(one), _steps(two)):
        assert abs(a["task_loss"] - b["task_loss"]) < 1e-4 * abs(a["task_loss"])
        assert abs(a["penalty"] - b["penalty"]) <= 1e-4 * abs(a["penalty"]) + 1e-9
    assert json.loads((tmp_path / "two" / "train_summary.json").read_text())["fsdp"]["world_size"] == 2
    wa = load_file(tmp_path / "one" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "two" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)


def test_a_finished_command_closes_the_process_group_a_launch_opened(toy_world, tmp_path):
    """Before: `asft train` under torchrun left gloo's group to the interpreter's exit, where its threads
    now and then aborted a finished, saved run ("terminate called without an active exception", exit -6;
    FSDP launches in full CI runs). The program (``asft.cli.entry``) now ends a rank whose command ended
    well with a barrier, the group destroyed and no interpreter finalisation (its atexit handlers do not
    run, its output is flushed); after an error the group and the normal exit stay."""
    def run(argv):
        script = f"""
import atexit, sys
import torch.distributed as dist
dist.init_process_group("gloo", init_method="file://{tmp_path / 'store'}", rank=0, world_size=1)
atexit.register(lambda: print("finalised, group", dist.is_initialized()))
sys.argv = ["asft", *{argv!r}]
from asft.cli import entry
entry()
"""
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
        (tmp_path / "store").unlink(missing_ok=True)
        return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)

    out = str(tmp_path / "a.safetensors")
    bad = run(["anchor", "--aligned", str(toy_world.aligned), "--out", out])  # no --base: an error
    assert bad.returncode == 2 and "error" in bad.stderr
    assert bad.stdout.splitlines()[-1] == "finalised, group True"
    good = run(["anchor", "--base", str(toy_world.base), "--aligned", str(toy_world.aligned), "--out", out])
    assert good.returncode == 0, good.stderr[-2000:]
    assert "finalised" not in good.stdout and out in good.stdout  # flushed, then out without finalisation
    from asft.runtime import close_process_group

    assert close_process_group() is False  # no group in this process: nothing to do, torch.distributed untouched
