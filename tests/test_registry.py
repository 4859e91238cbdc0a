"""The method registry: a method made outside the package runs end to end through `asft train` and
`asft experiment`; method names live in one place; the package's layers import only downwards."""

import ast
import json
from pathlib import Path

import pytest
import yaml

from asft.errors import AsftError
from asft.methods import (Method, all_methods, control_method, get_method, method_names, plain_method,
                          register_method)

SRC = Path(__file__).resolve().parents[1] / "src" / "asft"


def test_registry_roles_names_and_refusals():
    assert method_names() == ["aligned", "sft", "safelora", "safeinstr", "bea", "lisa", "l2", "asft", "act-anchor",
                              "fisher-anchor", "nullspace", "hidden-anchor", "kl-anchor"]
    assert method_names(trainable=True) == ["sft", "safeinstr", "bea", "lisa", "l2", "asft", "act-anchor",
                                            "fisher-anchor", "nullspace", "hidden-anchor", "kl-anchor"]
    assert plain_method().name == "sft" and control_method().name == "l2"
    assert get_method("asft").group(30.0) == "asft-reference-lam30"
    assert get_method("asft").group(1.0, "projector") == "asft-projector-lam1"
    assert get_method("l2").row_label({"lambda": 3.0}) == "l2 λ=3"
    assert get_method("safelora").row_label({"lambda": 0}) == "Safe LoRA"
    with pytest.raises(AsftError, match=r"unknown method 'nope' \(choose from aligned, sft"):
        get_method("nope")

    class Other(Method):
        name, control = "l2bis", True

    with pytest.raises(AsftError, match="cannot both be the control method"):
        register_method(Other())
    with pytest.raises(AsftError, match="already registered"):
        register_method(type("X", (Method,), {"name": "sft"})())


def test_plugin_method_trains_with_asft_train_and_runs_in_an_experiment(toy_world, tmp_path, capsys):
    from asft.cli import main
    from asft.experiments.plan import run_experiment

    data = toy_world.make_mix("topic", 64, 0.1)
    out = tmp_path / "adapter"
    argv = ["train", "--plugin", "plugin_method", "--model", str(toy_world.aligned), "--data", str(data),
            "--out", str(out), "--method", "shrinkb", "--lam", "5", "--template", "chat", "--lr", "1e-3",
            "--max-steps", "4", "--batch-size", "16", "--max-length", "128", "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 4 and summary["penalty"] > 0  # its penalty was added and logged
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "shrinkb"
    assert "| penalty | λ = 5.0 on ||B||_F^2 |" in (out / "README.md").read_text()
    # the parser's choices are the registry's, the plugin's method among them
    with pytest.raises(SystemExit):
        main([*argv[:-1], "--method", "nope"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "'shrinkb'" in err and "'asft'" in err

    cfg = {"name": "plugin", "world": {"size": "test", "seed": 0, "cache_dir": str(toy_world.root.parent)},
           "plugins": ["asft.toy", "plugin_method"], "judge": "toy", "template": "chat",
           "harmful_suite": "toy-harmful", "tasks": {"topic": {"suite": "toy-topic"}}, "n": 64, "p": [0.1],
           "seeds": [0, 1], "methods": ["sft", {"method": "l2", "lam": 5}, {"method": "shrinkb", "lam": 5}],
           "train": {"lr": 1e-3, "max_steps": 4, "batch_size": 16, "max_length": 128, "progress": False},
           "eval": {"limit": 16, "batch_size": 64}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(AsftError, match="plugin 'plugin_method' is not imported: a config is data"):
        run_experiment(path, tmp_path / "exp", workers=2, log=lambda m: None)
    res = run_experiment(path, tmp_path / "exp", workers=2, log=lambda m: None, allow_plugins=["plugin_method"])
    groups = [r["group"] for r in res["report"]["rows"]]
    assert groups == ["sft", "l2-lam5", "shrinkb-lam5"]  # the plugin's table order
    row = next(r for r in res["report"]["rows"] if r["group"] == "shrinkb-lam5")
    assert row["lambda"] == 5 and row["seeds"] == [0, 1]
    verdict = [v for v in res["report"]["verdict"] if v.startswith("shrink B λ=5")]
    assert len(verdict) == 1 and "vs l2 λ=5" in verdict[0] and "vs SFT" in verdict[0]
    md = (tmp_path / "exp" / "results.md").read_text()
    assert "| shrink B λ=5 | " in md


def _string_literals(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.value, node.lineno) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


# Where a method's name is also another word: the package and program name, a folder or flag name.
NOT_A_METHOD = {("asft", "cli/__init__.py"): "the program name",
                ("asft", "training/card.py"): "the library's tag in the model card",
                ("asft", "evaluation/cache.py"): "the cache folder ~/.cache/asft",
                ("asft", "toy/world.py"): "the cache folder ~/.cache/asft",
                ("aligned", "toy/world.py"): "the toy world's aligned-model folder",
                ("aligned", "cli/anchor.py"): "the --aligned flag",
                ("safelora", "cli/__init__.py"): "the `asft safelora` command's module",
                ("safelora", "cli/safelora.py"): "the `asft safelora` command"}


def test_a_method_name_is_written_only_in_its_own_module():
    """Every fact of a method lives in its module: no other module tests for its name."""
    found = []
    for method in all_methods():
        own = f"methods/{method.name.replace('-', '_')}.py"  # a module name has no hyphen
        for path in sorted(SRC.rglob("*.py")):
            rel = path.relative_to(SRC).as_posix()
            if rel in (own, "methods/base.py", "methods/__init__.py") or (method.name, rel) in NOT_A_METHOD:
                continue
            found += [f"{rel}:{line}: {value!r}" for value, line in _string_literals(path) if value == method.name]
    assert not found, "method names outside their modules:\n" + "\n".join(found)


# Families, lowest first: a module may import its own family and those below it, never above.
LAYERS = {"errors": 0, "fileio": 0, "runtime": 0, "progress": 0, "data": 0, "batches": 0, "models": 1,
          "methods": 2, "evaluation": 2, "training": 3, "report": 4, "toy": 4, "integrations": 4,
          "experiments": 5, "cli": 6, "__init__": 7, "__main__": 7}


def _imports(path: Path) -> set[str]:
    """The asft families ``path`` imports (at the top or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
        for name in names:
            parts = name.split(".")
            if parts[0] == "asft" and len(parts) > 1:
                out.add(parts[1])
            elif isinstance(node, ast.ImportFrom) and name == "asft":
                out.update(a.name for a in node.names)
    return out


def test_families_import_only_downwards():
    """No module imports a family above its own (``LAYERS``); every family is placed."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        family = rel.parts[0].removesuffix(".py")
        assert family in LAYERS, f"{rel}: family {family!r} has no layer in LAYERS"
        for other in _imports(path):
            if other in LAYERS and LAYERS[other] > LAYERS[family] and other != family:
                wrong.append(f"{rel} imports asft.{other}")
    assert not wrong, "\n".join(wrong)


def test_every_option_of_every_command_has_help():
    """Before: asft merge, align, data and report options were listed in --help with no text."""
    from asft.cli import _leaf_parsers, build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{leaf.prog} {a.option_strings or a.dest}" for leaf in _leaf_parsers(sub)
               for a in leaf._actions if not a.help and a.dest != "help"]
    assert missing == []
