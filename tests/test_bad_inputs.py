"""Every command, a table of bad values: one error line, exit 2, no traceback, nothing written.

Each case runs ``asft ...`` in its own process (a traceback or a stray output file of one case cannot
hide behind another's), two at a time, forked from one interpreter that imported torch once. New options get a row here; the table is what
keeps the next one from regressing into a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# (id, argv with {placeholders}, a piece of the error line, the path that must not be created or None)
CASES = [
    # --threads is every command's
    ("threads-0", "toy mix --world {world} --task topic --n 5 --p 0.1 --out {new}/m.json --threads 0",
     "argument --threads: must be >= 1, got 0", "{new}"),
    ("threads-after-toy-build", "toy build --out {file} --threads -1", "argument --threads: must be >= 1", None),
    # train
    ("train-lr-nan", "train {train} --lr nan", "lr must be a finite number > 0, got nan", "{new}"),
    ("train-lr-inf", "train {train} --lr inf", "lr must be a finite number > 0, got inf", "{new}"),
    ("train-epochs-0", "train {train} --epochs 0", "epochs must be a finite number > 0", "{new}"),
    ("train-limit-neg", "train {train} --limit -3", "limit must be >= 1", "{new}"),
    ("train-batch-0", "train {train} --batch-size 0", "batch_size must be >= 1", "{new}"),
    ("train-lam-nan", "train {train} --method l2 --lam nan", "lambda must be a finite number >= 0", "{new}"),
    ("train-lam-neg", "train {train} --method l2 --lam -1", "lambda must be a finite number >= 0", "{new}"),
    ("train-max-steps-neg", "train {train} --max-steps -1", "max_steps must be >= 1, got -1", "{new}"),
    ("train-save-steps-neg", "train {train} --save-steps -1", "save_steps must be >= 0", "{new}"),
    ("train-lora-r-0", "train {train} --lora-r 0", "lora_r must be >= 1", "{new}"),
    ("train-max-length-0", "train {train} --max-length 0", "max_length must be >= 1", "{new}"),
    ("train-out-file", "train --model {aligned} --data {mix} --method sft --template chat --out {file}",
     "exists and is not a folder", None),
    ("train-out-under-file", "train --model {aligned} --data {mix} --method sft --template chat --out {file}/x",
     "is a file, not a folder", None),
    ("train-data-missing", "train --model {aligned} --data {new}.json --method sft --template chat --out {new}",
     "file not found", "{new}"),
    ("train-data-folder", "train --model {aligned} --data {world} --method sft --template chat --out {new}",
     "is a folder, not a file", "{new}"),
    ("train-data-empty", "train --model {aligned} --data {empty} --method sft --template chat --out {new}",
     "expected a non-empty list of records", "{new}"),
    ("train-data-blank", "train --model {aligned} --data {blank} --method sft --template chat --out {new}",
     "empty instruction and output", "{new}"),
    ("train-model-file", "train --model {file} --data {mix} --method sft --template chat --out {new}",
     "is a file, not a model folder", "{new}"),
    ("train-anchor-missing", "train {train} --method asft --anchor {new}.safetensors", "anchor file not found", "{new}"),
    ("train-anchor-nan", "train {train} --method asft --anchor {nan_anchor}", "holds non-finite values", "{new}"),
    ("train-report-to-bad", "train {train} --report-to tensorbord", "unknown dashboard 'tensorbord'", "{new}"),
    ("experiment-report-to-bad", "experiment {exp} --out {new} --report-to wandbb", "unknown dashboard 'wandbb'",
     "{new}/runs"),
    ("train-config-missing", "train --config {new}.yaml --out {new}", "file not found", "{new}"),
    # eval
    ("eval-max-new-neg", "eval {eval} --max-new-tokens -5", "max new tokens must be >= 1, got -5", "{new}"),
    ("eval-limit-0", "eval {eval} --limit 0", "limit must be >= 1", "{new}"),
    ("eval-batch-0", "eval {eval} --batch-size 0", "--batch-size must be >= 1", "{new}"),
    ("eval-out-file", "eval --model {aligned} --suite toy-harmful --data-dir {eval_dir} --judge toy --out {file}",
     "exists and is not a folder", None),
    ("eval-data-dir-missing", "eval --model {aligned} --suite toy-harmful --data-dir {new} --judge toy --out {new}/e",
     "not found", "{new}"),
    ("eval-other-adapter", "eval {eval} --adapter {other_adapter}", "trained on another model", "{new}"),
    ("eval-suite-unknown", "eval --model {aligned} --suite nope --data-dir {eval_dir} --judge toy --out {new}",
     "unknown suite", "{new}"),
    # anchor
    ("anchor-rank-0", "anchor --base {base} --aligned {aligned} --out {new}.safetensors --rank 0",
     "--rank must be a positive integer", "{new}.safetensors"),
    ("anchor-out-under-file", "anchor --base {base} --aligned {aligned} --out {file}/a.safetensors",
     "is a file, not a folder", None),
    ("anchor-out-folder", "anchor --base {base} --aligned {aligned} --out {world}", "is a folder", None),
    ("anchor-base-missing", "anchor --base {new} --aligned {aligned} --out {new}.safetensors", "not found",
     "{new}.safetensors"),
    ("anchor-inspect-not-safetensors", "anchor --inspect {file}", "not a safetensors file", None),
    ("anchor-top-0", "anchor --inspect {anchor} --top 0", "argument --top: must be >= 1, got 0", None),
    # merge
    ("merge-out-file", "merge --model {aligned} --adapter {adapter} --out {file}", "exists and is not a folder", None),
    ("merge-other-adapter", "merge --model {aligned} --adapter {other_adapter} --out {new}", "trained on another model",
     "{new}"),
    ("merge-dtype-bad", "merge --model {aligned} --adapter {adapter} --out {new} --dtype int3", "dtype", "{new}"),
    ("merge-adapter-missing", "merge --model {aligned} --adapter {new}-a --out {new}", "not a LoRA adapter folder", "{new}"),
    # safelora
    ("safelora-out-file", "safelora --model {aligned} --adapter {adapter} --anchor {anchor} --out {file}",
     "exists and is not a folder", None),
    ("safelora-threshold-nan", "safelora --model {aligned} --adapter {adapter} --anchor {anchor} --out {new} "
     "--select threshold --threshold nan", "threshold", "{new}"),
    # data
    ("data-safety-n-0", "data safety --harmful {mix} --n 0 --out {new}.json", "argument --n: must be >= 1, got 0", "{new}.json"),
    ("data-mix-p-2", "data mix --task {mix} --harmful {mix} --n 10 --p 2 --out {new}.json", "0 <= p <= 1", "{new}.json"),
    ("data-inspect-missing", "data inspect {new}.json", "file not found", None),
    # experiment
    ("experiment-config-missing", "experiment {new}.yaml --out {new}", "file not found", "{new}"),
    ("experiment-workers-0", "experiment {exp} --out {new} --workers 0", "argument --workers: must be >= 1", "{new}"),
    ("experiment-shard-bad", "experiment {exp} --out {new} --shard 3/2", "--shard 3/2", "{new}"),
    ("experiment-out-file", "experiment {exp} --out {file}", "is a file, not a folder", None),
    # report
    ("report-dir-missing", "report {new} --out {new}-r", "not a folder", "{new}-r"),
    ("report-out-under-file", "report {world} --out {file}/r", "no finished runs", None),
    # landscape
    ("landscape-steps-0", "landscape --model {aligned} --anchor {anchor} --data-dir {eval_dir} --suite toy-harmful "
     "--judge toy --steps 0 --out {new}", "need steps >= 2", "{new}"),
    ("landscape-range-nan", "landscape --model {aligned} --anchor {anchor} --data-dir {eval_dir} --suite toy-harmful "
     "--judge toy --range nan 1 --out {new}", "--range", "{new}"),
    # toy
    ("toy-mix-n-neg", "toy mix --world {world} --task topic --n -1 --p 0.1 --out {new}.json", "n >= 1", "{new}.json"),
    ("toy-build-out-file", "toy build --out {file}", "exists and is not a toy world", None),
    # import-gguf
    ("gguf-truncated", "import-gguf {truncated_gguf} --out {new}", "truncated or corrupt GGUF", "{new}"),
    ("gguf-not-gguf", "import-gguf {file} --out {new}", "not a GGUF file", "{new}"),
    # export-gguf
    ("export-not-a-model", "export-gguf --model {world} --out {new}.gguf", "not a model folder", "{new}.gguf"),
    ("export-word-tokenizer", "export-gguf --model {aligned} --adapter {adapter} --out {new}.gguf",
     "export writes byte-level BPE tokenizers (gpt2 kind); this one is WordLevel", "{new}.gguf"),
    ("export-dtype-bad", "export-gguf --model {aligned} --out {new}.gguf --dtype q4", "argument --dtype", "{new}.gguf"),
    ("export-out-folder", "export-gguf --model {aligned} --out {world}", "is a folder", None),
    # overrides
    ("train-override-typo", "train {train} lamda=3", "unknown option 'lamda' (did you mean 'lam'?)", "{new}"),
    ("train-override-twice", "train {train} --lr 1e-3 learning_rate=2e-3", "lr is given twice", "{new}"),
    ("experiment-override-bad", "experiment {exp} --out {new} train.lr=-1", "lr must be a finite number > 0",
     "{new}"),
    ("experiment-override-not-kv", "experiment {exp} --out {new} seeds", "unrecognized arguments: seeds", "{new}"),
    # align
    ("align-epochs-0", "align --model {aligned} --harmful {mix} --out {new} --epochs 0", "epochs must be a finite number > 0", "{new}"),
    ("align-lr-nan", "align --model {aligned} --harmful {mix} --out {new} --lr nan", "lr must be a finite number > 0",
     "{new}"),
    ("align-batch-0", "align --model {aligned} --harmful {mix} --out {new} --batch-size 0", "batch size must be >= 1",
     "{new}"),
    # demo
    ("demo-workers-0", "demo --out {new} --workers 0", "argument --workers: must be >= 1", "{new}"),
]


@pytest.fixture(scope="module")
def paths(toy_world, tmp_path_factory):
    """Real inputs for the good half of each command line: the toy world, a mix, an anchor, a LoRA
    adapter of the aligned model and one of another model, a truncated GGUF, bad data files."""
    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from safetensors.torch import save_file

    from _models import make_llama_pair
    from asft.models.anchor import build_anchor
    from asft.models.modeling import load_model

    root = tmp_path_factory.mktemp("bad")
    anchor = root / "anchor.safetensors"
    build_anchor(toy_world.base, toy_world.aligned, out=anchor)
    with safe_open(str(anchor), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    first = sorted(tensors)[0]
    tensors[first][0, 0] = float("nan")
    save_file(tensors, str(root / "nan.safetensors"), metadata=meta)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    torch.manual_seed(0)
    get_peft_model(load_model(toy_world.aligned, dtype="float32", device="cpu"), lora).save_pretrained(root / "adapter")
    _, other = make_llama_pair(root / "other", seed=1, hidden=32)
    get_peft_model(load_model(other, dtype="float32", device="cpu"), lora).save_pretrained(root / "other_adapter")
    (root / "file.txt").write_text("not a folder\n")
    (root / "empty.json").write_text("[]")
    (root / "blank.json").write_text(json.dumps([{"instruction": " ", "output": ""}]))
    (root / "trunc.gguf").write_bytes(b"GGUF\x03\x00\x00\x00\x05")
    mix = toy_world.make_mix("topic", 40, 0.1)
    (root / "exp.yaml").write_text(json.dumps({
        "name": "x", "model": str(toy_world.aligned), "eval_dir": str(toy_world.eval_dir), "judge": "toy",
        "plugins": ["asft.toy"], "harmful_suite": "toy-harmful", "template": "chat",
        "tasks": {"topic": {"suite": "toy-topic", "data": str(mix)}}, "methods": ["sft"]}))
    p = {"world": toy_world.root, "base": toy_world.base, "aligned": toy_world.aligned, "eval_dir": toy_world.eval_dir,
         "mix": mix, "anchor": anchor, "nan_anchor": root / "nan.safetensors", "adapter": root / "adapter",
         "other_adapter": root / "other_adapter", "file": root / "file.txt", "empty": root / "empty.json",
         "blank": root / "blank.json", "truncated_gguf": root / "trunc.gguf", "exp": root / "exp.yaml"}
    p["train"] = f"--model {p['aligned']} --data {mix} --method sft --template chat --out {{new}}"
    p["eval"] = f"--model {p['aligned']} --suite toy-harmful --data-dir {p['eval_dir']} --judge toy --out {{new}}"
    return root, p


# A fork server: one fresh interpreter imports asft, torch and transformers once (nothing else: no
# torch op runs before a fork), then forks a child per case that runs `asft.cli.main(argv)` with its
# stdout and stderr in files. Each case is its own process, at a fraction of an interpreter's start.
SERVER = r"""
import json, os, signal, sys, time
import torch, transformers, peft  # noqa: F401  (the slow imports, shared by every child)
import asft.cli, asft.training.train, asft.evaluation.run  # noqa: F401
jobs = json.loads(sys.stdin.read())
running, done = {}, {}
def reap(block):
    for pid, (name, t0) in list(running.items()):
        got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        if got:
            done[name] = os.waitstatus_to_exitcode(status); del running[pid]; return True
        if time.time() - t0 > 30:  # a bad value is refused at once: still running means taken as good
            os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0); done[name] = None; del running[pid]; return True
    return False
for job in jobs:
    while len(running) >= 2:
        if not reap(False):
            time.sleep(0.02)
    pid = os.fork()
    if pid == 0:
        os.chdir(job["cwd"])
        for fd, path in ((1, job["out"]), (2, job["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644); os.dup2(f, fd); os.close(f)
        sys.argv = ["asft", *job["argv"]]
        try:
            rc = asft.cli.main(job["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:
            import traceback; traceback.print_exc(); rc = 1
        sys.stdout.flush(); sys.stderr.flush()
        os._exit(int(rc or 0))
    running[pid] = (job["name"], time.time())
while running:
    if not reap(False):
        time.sleep(0.02)
print(json.dumps(done))
"""


def _argv(case, root: Path, p: dict) -> tuple[list[str], Path]:
    name, argv, _, _ = case
    new = root / "new" / name
    fill = {k: str(v) for k, v in p.items()}
    text = argv.format(**{**fill, "new": "{new}"}).format(new=new)  # {train} and {eval} hold {new}
    return text.split(), new


@pytest.fixture(scope="module")
def outcomes(paths):
    root, p = paths
    logs = root / "logs"
    logs.mkdir()
    (root / "new").mkdir()
    jobs, news = [], {}
    for case in CASES:
        argv, news[case[0]] = _argv(case, root, p)
        jobs.append({"name": case[0], "argv": argv, "cwd": str(root), "out": str(logs / f"{case[0]}.out"),
                     "err": str(logs / f"{case[0]}.err")})
    env = {**os.environ, "ASFT_THREADS": "1", "ASFT_EVAL_CACHE": "off"}
    proc = subprocess.run([sys.executable, "-c", SERVER], input=json.dumps(jobs), capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    codes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {c[0]: {"rc": codes[c[0]], "err": (logs / f"{c[0]}.err").read_text(), "new": news[c[0]]} for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_value_is_one_error_line(outcomes, paths, case):
    name, _, message, untouched = case
    got = outcomes[name]
    lines = [x for x in got["err"].splitlines() if x.strip() and "it/s]" not in x]
    assert "Traceback" not in got["err"], got["err"][-2000:]
    assert got["rc"] == 2, got["err"][-2000:]
    assert len(lines) == 1 and lines[0].startswith("asft") and "error:" in lines[0], got["err"][-2000:]
    assert message in lines[0], lines[0]
    if untouched is not None:
        path = Path(untouched.format(new=got["new"]))
        assert not path.exists(), f"{path} was written"
