"""The runtime policy: one thread rule for every command, and the environment record."""

import argparse

import pytest
import torch

from asft import runtime
from asft.errors import AsftError


def test_thread_count_override_then_env_then_half_the_cores(monkeypatch):
    monkeypatch.delenv("ASFT_THREADS", raising=False)
    monkeypatch.setattr(runtime, "usable_cores", lambda: 2)
    assert runtime.thread_count() == 1  # a busy 2-core machine: never oversubscribe
    monkeypatch.setattr(runtime, "usable_cores", lambda: 16)
    assert runtime.thread_count() == 8
    monkeypatch.setattr(runtime, "usable_cores", lambda: 1)
    assert runtime.thread_count() == 1
    monkeypatch.setenv("ASFT_THREADS", "3")
    assert runtime.thread_count() == 3
    assert runtime.thread_count(override=2) == 2
    monkeypatch.setenv("ASFT_THREADS", "many")
    with pytest.raises(AsftError, match="ASFT_THREADS='many' is not a whole number"):
        runtime.thread_count()
    with pytest.raises(AsftError, match="--threads must be at least 1"):
        runtime.thread_count(override=0)


def test_the_policy_does_not_read_the_load_average(monkeypatch):
    monkeypatch.delenv("ASFT_THREADS", raising=False)
    import os

    def boom():
        raise AssertionError("the thread policy must not depend on the load")

    monkeypatch.setattr(os, "getloadavg", boom)
    assert runtime.thread_count() >= 1


def test_every_command_takes_threads_and_applies_the_policy(monkeypatch):
    from asft import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {c.replace("_", "-") for c in cli.COMMANDS}
    for p in cli._leaf_parsers(sub):  # every command, and every action of one (asft toy build, asft data mix)
        assert "--threads" in p._option_string_actions, p.prog
    assert {"asft toy build", "asft data mix"} <= {p.prog for p in cli._leaf_parsers(sub)}

    seen = {}
    before = torch.get_num_threads()
    try:
        for name in sub.choices:
            for env, flag, expected in (("3", None, 3), ("3", 2, 2)):
                monkeypatch.setenv("ASFT_THREADS", env)
                ns = argparse.Namespace(command=name, threads=flag,
                                        func=lambda a: seen.__setitem__(a.command, torch.get_num_threads()))
                monkeypatch.setattr(cli.Parser, "parse_known_args",  # not the --plugin pre-parser
                                    lambda self, argv=None, ns=ns: (ns, []))
                assert cli.main([]) == 0
                assert seen[name] == expected, name
    finally:
        torch.set_num_threads(before)


def test_environment_record_names_what_changes_results():
    key = runtime.result_key("cpu")
    assert set(key) >= {"torch", "transformers", "peft", "cpu_capability", "device"}
    assert key["torch"] == torch.__version__ and key["device"] == "cpu"
    assert key["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
    env = runtime.environment("cpu")
    assert {k: env[k] for k in key} == key
    assert env["threads"] == torch.get_num_threads() and env["cores"] == runtime.usable_cores()
    assert "threads" not in key  # results do not depend on it (tests/test_train.py, test_demo.py)


def test_help_starts_without_importing_torch():
    """`asft --help` and `asft COMMAND --help` list every option without loading torch (instant)."""
    import subprocess
    import sys

    code = ("import sys; from asft.cli import build_parser; p = build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_command_help_shows_an_example():
    from asft.cli import COMMANDS, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert len(sub.choices) == len(COMMANDS)
    for name, command in sub.choices.items():
        text = command.format_help()
        assert "\nexample: asft " + name in text, name


def test_version_is_the_installed_distributions(capsys):
    """Before: `asft --version` was an error."""
    from importlib.metadata import version

    from asft import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"asft {version('asft')}"
