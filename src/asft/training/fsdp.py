"""``asft train --fsdp``: the model sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``) across the
processes ``torchrun`` / ``accelerate launch`` started, the LoRA weights included.

Why the penalties still see whole weights: a sharded parameter is a ``DTensor`` holding this rank's
rows. A penalty reads ``asft.methods.regularizer.whole(p)`` (``DTensor.full_tensor()``, an all-gather that autograd knows), so
every rank computes the same whole penalty and the backward of the gather hands each rank the
gradient of its own rows; FSDP's reduce-scatter averages only the task loss's gradient over ranks.
LoRA weights are small, so this gather costs little next to the base layers' own all-gathers. Measured
on 2 CPU processes (gloo): the same task loss and penalty per step as one process on the whole batch,
and the same adapter (``tests/test_distributed.py``).

Order matters: LoRA modules first (their float32 weights are their own FSDP groups, so a bf16 base
layer and its float32 adapter never share one all-gather), then each decoder layer, then the root.
The Trainer is told the model owns its placement and gradient reduction (it does not wrap it in DDP).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from asft.errors import AsftError


def shard_model(model: nn.Module) -> dict:
    """Shard a PEFT model in place: every LoRA A / B, every decoder layer (the model's
    ``_no_split_modules`` classes), the root. Returns what was sharded (recorded in train_summary.json)."""
    from torch.distributed.fsdp import fully_shard

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layer_types = set(getattr(base, "_no_split_modules", None) or [])
    lora = [sub for module in list(model.modules()) for name in ("lora_A", "lora_B")
            if isinstance(getattr(module, name, None), nn.ModuleDict) for sub in getattr(module, name).values()]
    for sub in lora:
        fully_shard(sub)
    layers = [m for m in model.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise AsftError(f"--fsdp: no decoder layers found to shard ({type(base).__name__} names none in "
                        "_no_split_modules)")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    # the Trainer's switch for a model that is already distributed: no DDP wrap, no second sharding
    base._is_distributed_loading_by_transformers = True
    from torch.distributed.tensor import DTensor

    sharded = [n for n, p in model.named_parameters() if isinstance(p, DTensor)]
    return {"world_size": torch.distributed.get_world_size(), "decoder_layers": len(layers),
            "lora_modules": len(lora), "sharded_parameters": len(sharded),
            "parameters": sum(1 for _ in model.parameters())}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's LoRA tensors, whole, on the CPU (a collective: every rank calls it, in the same
    order), for rank 0 to save as the unsharded run does (a plain PEFT adapter)."""
    from asft.methods.regularizer import whole

    return {name: whole(t).detach().cpu().clone() for name, t in model.state_dict().items() if "lora_" in name}


def launcher_alone(environ: dict, cmdline: list[str], default_config: Path | None) -> str | None:
    """A sentence when ``accelerate launch`` was asked for N > 1 processes and started this one alone (it
    does so for a MULTI_CPU config without mpirun: no WORLD_SIZE, one process, no error), else None.
    ``cmdline``: the launcher's command line (``--config_file``, ``--num_processes``); ``default_config``:
    accelerate's default config file, read when the command line names none."""
    if "ACCELERATE_MIXED_PRECISION" not in environ or int(environ.get("WORLD_SIZE", "1")) > 1:
        return None  # not started by accelerate launch, or really distributed
    asked, where = None, None
    for flag in ("--num_processes", "--num-processes"):
        if flag in cmdline[:-1]:
            asked, where = cmdline[cmdline.index(flag) + 1], f"{flag} on its command line"
    config = None
    for flag in ("--config_file", "--config-file"):
        if flag in cmdline[:-1]:
            config = Path(cmdline[cmdline.index(flag) + 1])
    config = config or default_config
    if asked is None and config is not None and config.is_file():
        import yaml

        try:
            asked = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("num_processes")
        except yaml.YAMLError:
            asked = None
        where = f"num_processes in {config}"
    try:
        n = int(asked)
    except (TypeError, ValueError):
        return None
    if n <= 1:
        return None
    return (f"accelerate launch asked for {n} processes ({where}) but started this one alone (a MULTI_CPU "
            f"config without mpirun does): training as 1 process; for {n}, launch with "
            f"torchrun --nproc_per_node {n} -m asft train ...")
