"""The one timed optimiser step the training benchmarks compare (forward, backward, AdamW step)."""

from __future__ import annotations

import time
from typing import Callable

import torch


def timed_step(loss_fn: Callable[[], torch.Tensor], opt: torch.optim.Optimizer) -> tuple[float, float]:
    """Run ``loss_fn()``, backward and one ``opt`` step; returns (seconds, loss)."""
    t0 = time.perf_counter()
    loss = loss_fn()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, loss.item()
