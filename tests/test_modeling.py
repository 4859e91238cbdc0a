"""asft.modeling helpers that need no model folder."""

import torch

from asft.modeling import set_cpu_threads


def test_set_cpu_threads_honours_asft_threads_and_returns_the_previous_count(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("ASFT_THREADS", "1")
        assert set_cpu_threads() == (1, before) and torch.get_num_threads() == 1
        monkeypatch.delenv("ASFT_THREADS")
        n, prev = set_cpu_threads()  # from the idle cores: at least 1, at most 4
        assert prev == 1 and 1 <= n <= 4 and torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
