"""Session fixtures shared by the whole test suite. Keep each fixture small and documented."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    """The tests run under the library's thread policy (``asft.runtime``: $ASFT_THREADS, else half
    the usable cores), as every CLI command does: torch's default of one thread per core
    oversubscribes a shared machine (a toy Lisa run: 255 s at 2 threads beside a busy core, 5 s
    at 1). Results do not depend on it."""
    from asft.runtime import apply_threads

    apply_threads()
    # No test reads or fills the user's shared evaluation store (asft.evaluation.run.eval_store); the
    # tests of the store pass their own folder.
    os.environ["ASFT_EVAL_CACHE"] = "off"


@pytest.fixture(scope="session")
def toy_world():
    """The "test"-size toy world, seed 0: real tiny base/aligned Llama models, data and eval sets.

    Built once (about 30 s on one core) into ``<repo>/.cache/toy`` (git-ignored; ``ASFT_TEST_CACHE``
    overrides) and reused by later sessions; the cache key includes the world's version.
    Paths: ``toy_world.base``, ``.aligned``, ``.eval_dir``; mixes: ``toy_world.make_mix(task, n, p)``.
    """
    from asft.toy import get_world

    cache = os.environ.get("ASFT_TEST_CACHE") or REPO / ".cache" / "toy"
    return get_world(size="test", seed=0, cache_dir=cache)


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
    """``(base_dir, aligned_dir)``: a tiny random Llama (``_models.make_llama_pair``, seed 0) and the
    same model plus dense N(0, 0.01^2) noise, single-file safetensors. Read-only: copy to modify."""
    from _models import make_llama_pair

    return make_llama_pair(tmp_path_factory.mktemp("single"), seed=0)


@pytest.fixture(scope="session")
def sharded_pair(tmp_path_factory):
    """The same weights as ``pair``, each folder split into 3 safetensors shards with an index."""
    from _models import make_llama_pair

    return make_llama_pair(tmp_path_factory.mktemp("sharded"), seed=0, shards=3)
