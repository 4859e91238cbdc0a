"""Helpers for tests of training runs."""

import shutil
from pathlib import Path


def crashed_copy(full: Path, crashed: Path, lost=("checkpoint-6", "checkpoint-8")) -> Path:
    """A copy of the finished run ``full`` as a kill after its last kept checkpoint would leave it: the
    ``lost`` checkpoints and the final files (adapter, card, summary) never written."""
    shutil.copytree(full, crashed)
    for name in lost:
        shutil.rmtree(crashed / "checkpoints" / name)
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "train_summary.json"):
        (crashed / name).unlink()
    return crashed
