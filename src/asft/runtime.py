"""Runtime policy: how many CPU threads torch uses, and the record of the environment a result
came from.

Threads. Every command uses the same fixed policy (never the load average, so the choice does not
change from one minute to the next): ``--threads N``, else ``$ASFT_THREADS``, else one thread per
two usable cores (at least 1). Why half: torch's OpenMP threads busy-wait for each other, and
when they outnumber the idle cores a busy machine time-slices them against other work; on a
loaded 2-core machine 2 threads ran a SmolLM2 LoRA step in 19.7 s against 3.5 s with 1 thread.
Results do not depend on the count (the tests check train and the demo rows at 1 and 2
threads); only speed does.

Environment. ``environment()`` is written into world.json, train_summary.json and results.json:
library versions, the CPU instruction set torch dispatches to, threads and device.
``result_key()`` is the part of it that can change numbers (versions, instruction set, device),
which the caches of the toy world, experiment runs and evaluations include.

Process group. A command launched by torchrun / accelerate ends with ``close_process_group()``
and leaves without the interpreter's finalisation (``asft.cli.entry``): left to it, gloo's
threads were torn down at random against it ("terminate called without an active exception", a
finished, saved run killed by SIGABRT; pytorch/pytorch#190489).
"""

from __future__ import annotations

import os
import platform

THREADS_ENV = "ASFT_THREADS"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def thread_count(override: int | None = None) -> int:
    """The policy's thread count: ``override``, else ``$ASFT_THREADS``, else usable cores // 2."""
    from asft.errors import AsftError

    if override is not None:
        n, where = override, "--threads"
    elif os.environ.get(THREADS_ENV):
        raw = os.environ[THREADS_ENV]
        try:
            n = int(raw)
        except ValueError:
            raise AsftError(f"{THREADS_ENV}={raw!r} is not a whole number of threads") from None
        where = THREADS_ENV
    else:
        return max(1, usable_cores() // 2)
    if n < 1:
        raise AsftError(f"{where} must be at least 1, got {n}")
    return n


def apply_threads(override: int | None = None) -> tuple[int, int]:
    """Set torch's intra-op threads by the policy; returns ``(new, previous)``."""
    import torch

    prev = torch.get_num_threads()
    n = thread_count(override)
    torch.set_num_threads(n)
    return n, prev


def close_process_group() -> bool:
    """End torch.distributed's default process group if this process holds one: a barrier (every rank
    has finished, rank 0 has saved), then destroy it; True when it did. Never imports torch itself."""
    import sys

    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    dist.barrier()
    dist.destroy_process_group()
    return True


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels dispatch to (e.g. ``AVX512``, ``AVX2``, ``DEFAULT``)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old torch
        return "unknown"


def _version(module: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return None


def result_key(device: str | None = None) -> dict:
    """What can change a result's numbers besides its inputs: library versions, the CPU instruction
    set (float reductions are ordered differently by AVX2 and AVX-512 kernels) and the device."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    key = {"torch": torch.__version__, "transformers": _version("transformers"), "peft": _version("peft"),
           "cpu_capability": cpu_capability(), "device": dev}
    if dev.startswith("cuda") and torch.cuda.is_available():
        key["gpu"] = torch.cuda.get_device_name(0)
    return key


def environment(device: str | None = None) -> dict:
    """``result_key()`` plus what explains speed: threads, cores, Python, machine."""
    import torch

    return {**result_key(device), "accelerate": _version("accelerate"), "threads": torch.get_num_threads(),
            "cores": usable_cores(), "python": platform.python_version(), "machine": platform.machine()}
