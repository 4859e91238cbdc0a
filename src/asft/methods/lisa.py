"""Lisa (Huang et al., NeurIPS 2024, "Lazy Safety Alignment"): bi-state optimisation with a proximal term.

Fine-tuning alternates between two states, starting with alignment:

* alignment: ``align_steps`` steps on batches of safety demonstrations (the task batch the Trainer
  drew for that step is set aside, as in the authors' code, so task data is seen in fewer steps);
* fine-tuning: ``finetune_steps`` steps on task batches.

At each switch the trainable weights at the end of the state just left are kept (``theta_kept``);
every step of the new state adds ``rho/2 * sum_p ||p - theta_kept[p]||^2`` over the trainable (LoRA)
parameters, which pulls the two states towards a consensus. As in the authors' ``LisaTrainer``
(git-disl/Lisa, trainer.py): steps are micro-steps (calls of ``training_step``), the proximal term
is off during the first 10% of all training steps, and their scripts use 100 / 900 steps, rho = 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterator

from asft.errors import AsftError
from asft.methods.base import Method, register_method

if TYPE_CHECKING:  # torch is imported where it is used: the method registry stays light
    import torch

WARMUP_FRACTION = 0.1  # no proximal term before this fraction of the steps (authors' code)


class Lisa:
    """The state machine of Lisa over ``params`` (name -> trainable tensor).

    ``alignment_batches``: an endless iterator of alignment batches. ``total_steps``: micro-steps of
    the whole run (for the warm-up). Use: ``inputs = lisa.next_inputs(inputs)`` before a step's
    forward pass, ``loss + lisa.proximal()``, then ``lisa.step_done()``.
    """

    def __init__(self, params: dict[str, torch.Tensor], alignment_batches: Iterator[dict],
                 align_steps: int = 100, finetune_steps: int = 900, rho: float = 1.0,
                 total_steps: int = 0):
        if align_steps < 1 or finetune_steps < 1:
            raise ValueError(f"lisa needs at least one step per state, got {align_steps} / {finetune_steps}")
        self.params = params
        self.batches = alignment_batches
        self.align_steps, self.finetune_steps, self.rho = align_steps, finetune_steps, rho
        self.warmup = WARMUP_FRACTION * total_steps
        self.status = "alignment"
        self.kept = {"alignment": self._snapshot(), "finetune": self._snapshot()}
        self.clock = 0  # steps in the current state
        self.steps = 0  # steps in all
        self.alignment_steps_done = 0

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def _switch(self, to: str) -> None:
        self.kept[self.status] = self._snapshot()  # the state being left keeps its end point
        self.status = to
        self.clock = 0

    def next_inputs(self, inputs: dict) -> dict:
        """The batch of this step: an alignment batch in the alignment state, else ``inputs``."""
        if self.status == "alignment" and self.steps and self.clock % self.align_steps == 0:
            self._switch("finetune")
        elif self.status == "finetune" and self.steps and self.clock % self.finetune_steps == 0:
            self._switch("alignment")
        if self.status == "alignment":
            self.alignment_steps_done += 1
            return next(self.batches)
        return inputs

    def proximal(self) -> torch.Tensor:
        """``rho/2 * sum ||p - kept||^2`` towards the other state's last weights (0 in the warm-up)."""
        import torch

        first = next(iter(self.params.values()))
        if self.rho <= 0 or self.steps <= self.warmup:
            return first.new_zeros(())
        other = self.kept["finetune" if self.status == "alignment" else "alignment"]
        total = first.new_zeros((), dtype=torch.float32)
        for name, p in self.params.items():
            total = total + (p.float() - other[name].float()).pow(2).sum()
        return self.rho / 2 * total

    penalty = proximal  # the trainer's name for a hook's training-time term

    def step_done(self) -> None:
        self.steps += 1
        self.clock += 1


def endless(loader_factory: Callable[[int], torch.utils.data.DataLoader]) -> Iterator[dict]:
    """Batches of ``loader_factory(epoch)`` for epoch 0, 1, ... (a new shuffle per pass, like the
    authors' re-created iterator)."""
    epoch = 0
    while True:
        yielded = False
        for batch in loader_factory(epoch):
            yielded = True
            yield batch
        if not yielded:
            raise ValueError("lisa: the alignment data gave no batch")
        epoch += 1


class LisaMethod(Method):
    name = "lisa"
    label = "Lisa"
    order = 50
    help = "Lisa: alternating alignment / fine-tuning states with a proximal term"
    needs_safety_data = True
    shardable = False  # the proximal term reads whole LoRA weights
    fsdp = "its alternating states copy whole LoRA weights, not made under sharding yet"

    def validate(self, cfg) -> None:
        super().validate(cfg)
        if cfg.lisa_align_steps < 1 or cfg.lisa_finetune_steps < 1:
            raise AsftError("lisa needs --lisa-align-steps and --lisa-finetune-steps >= 1, got "
                            f"{cfg.lisa_align_steps} / {cfg.lisa_finetune_steps}")
        if cfg.lisa_rho < 0 or not math.isfinite(cfg.lisa_rho):
            raise AsftError(f"lisa_rho must be a finite number >= 0, got {cfg.lisa_rho}")
        if cfg.resume:
            raise AsftError("lisa cannot --resume: its alternating state is not in the checkpoints")

    def build_hook(self, cfg, model, tokenizer, args, batches_per_epoch: int) -> Lisa:
        """The state machine over the model's trainable (LoRA) weights, fed with batches of
        ``cfg.safety_data`` (all records, or the first ``cfg.safety_n`` of a seeded shuffle)."""
        import torch

        from asft.batches import PadCollator, SupervisedDataset
        from asft.data import load_records
        from asft.methods.safeinstr import mix_safety

        safety = load_records(cfg.safety_data)
        if cfg.safety_n is not None:
            safety = mix_safety([], safety, cfg.safety_n, cfg.seed)
        aligned = SupervisedDataset(safety, tokenizer, cfg.template, cfg.max_length)
        collate = PadCollator(tokenizer.pad_token_id)

        def loader(epoch: int):
            # seeded per epoch and per process: each rank draws its own alignment batches
            g = torch.Generator().manual_seed(cfg.seed * 1000 + epoch * 10 + args.process_index)
            return torch.utils.data.DataLoader(aligned, batch_size=cfg.batch_size, shuffle=True, generator=g,
                                               collate_fn=collate)

        steps = (cfg.max_steps * cfg.grad_accum if cfg.max_steps
                 else math.ceil(batches_per_epoch * cfg.epochs))  # micro-steps, as the authors count them
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        return Lisa(params, endless(loader), cfg.lisa_align_steps, cfg.lisa_finetune_steps, cfg.lisa_rho,
                    total_steps=steps)


LISA = register_method(LisaMethod())
