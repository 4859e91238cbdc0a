"""The README's Python snippets run, in order, as a user would paste them."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch, toy_world):
    pytest.importorskip("trl", reason="one README block uses TRL (installed by the test extra)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ASFT_CACHE", str(tmp_path / "cache"))  # the shipped demo world, copied here
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
    assert namespace["results"]["toy-harmful"].n == 24
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert "| toy-harmful | 24 | toy |" in (tmp_path / "out" / "README.md").read_text()  # the model card
