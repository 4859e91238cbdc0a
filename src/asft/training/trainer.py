"""The Trainer side of a method: ``AsftMixin`` adds a method's training-time term (a penalty counted
once per optimiser update, a batch hook) to any ``transformers.Trainer`` subclass; ``AsftTrainer`` is
the mixin on HF's ``Trainer``; ``keep_label_positions`` runs the output layer only where a label is
predicted.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from asft.errors import AsftError
from asft.fileio import append_jsonl
from asft.models.modeling import accepts_logits_to_keep


def keep_label_positions(model, inputs: dict) -> dict:
    """``inputs`` for a forward that computes logits only where the next token is a label.

    ``labels`` (B, T) with -100 on prompt and padding; position t predicts token t + 1, so the kept
    positions are ``labels[:, 1:] != -100``, passed as a boolean ``logits_to_keep`` (B, T): the model
    applies its output layer (and logit soft-capping) to those N rows only, and its loss function
    (``ForCausalLMLoss``) takes the matching ``shift_labels`` (N,): the same per-token cross-entropy,
    summed and normalised as before (``num_items_in_batch`` or the label count). The output layer of a
    262k-word vocabulary (Gemma 3) costs more than the rest of the model; an SST-2 answer is 1-5 of ~100
    tokens. Unchanged inputs when the model cannot slice this way."""
    labels = inputs.get("labels")
    if labels is None or labels.dim() != 2 or "logits_to_keep" in inputs or not accepts_logits_to_keep(model):
        return inputs
    nxt = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = nxt != -100
    return {**inputs, "logits_to_keep": keep, "shift_labels": nxt[keep[:, :-1]]}


class AsftMixin:
    """Adds AsFT to a ``transformers.Trainer`` subclass (``class T(AsftMixin, Trainer)``; TRL's
    ``SFTTrainer`` in ``asft.integrations.trl``): the loss is task loss + ``penalty()`` (an ``AsftPenalty``,
    counted once per optimiser update whatever the gradient accumulation), with the task loss
    and the penalty logged as their own scalars (``task_loss``, ``penalty``: every
    ``report_to`` integration, e.g. TensorBoard, receives them).

    ``lr_gamma``: the reference code's StepLR (learning rate times gamma after every epoch)
    instead of the ``TrainingArguments`` scheduler; None keeps the Trainer's own.
    ``log_path``: also append the logs to this JSONL file. ``hook``: a method's training hook
    (``Method.build_hook``), each part optional: ``next_inputs(inputs)`` picks each micro-step's batch
    and ``step_done()`` follows it (Lisa); ``penalty`` is the training-time term, used when ``penalty``
    is not given (Lisa's proximal term, the data anchors); ``after_optimizer_step()`` runs after every
    optimiser update (the null-space projection).

    A penalty with ``per_step = True`` (one that runs the model on its own inputs: the hidden-state and
    KL anchors) is called as ``penalty(step)`` once per optimiser update, on its last micro-batch, and
    weighted so that it counts once; other penalties are called as ``penalty()`` on every micro-batch
    with weight 1 / accumulation steps. Both count once per update.

    ``label_positions_only`` (``AsftTrainer``: on): in training, the output layer runs only at the
    positions whose next token is a label (``keep_label_positions``), with the model's own loss on
    them: the same loss, a fraction of the work where responses are short and the vocabulary is large.
    """

    label_positions_only = False

    def __init__(self, *args, penalty=None, lr_gamma: float | None = None, log_path: Path | None = None,
                 steps_per_epoch: int | None = None, hook=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hook = hook  # e.g. asft.methods.lisa.Lisa: swaps in alignment batches, adds its proximal term
        self.penalty = penalty if penalty is not None else getattr(hook, "penalty", None)
        self.lr_gamma = lr_gamma
        self.steps_per_epoch = steps_per_epoch
        self.log_path = log_path
        self._reset_sums()
        self.last_task_loss = float("nan")
        self.last_penalty = 0.0

    def _reset_sums(self):
        # Tensors on the model's device: adding floats here would sync the GPU every step.
        self._task_sum, self._pen_sum, self._n = 0.0, 0.0, 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.label_positions_only and not return_outputs and model.training:
            inputs = keep_label_positions(model, inputs)
        # outputs only when asked: TRL's fused loss recomputes the logits (an extra forward) for them
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        # Trainer divides the loss by the accumulation steps unless the task loss is already
        # normalised over the whole accumulated batch (then each micro-batch's loss is a
        # partial sum). Either way the penalty must count once per optimiser update.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = (getattr(self, "model_accepts_loss_kwargs", False)
                      and num_items_in_batch is not None) or self.compute_loss_func is not None
        ga = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        self._task_sum = self._task_sum + loss.detach() * (ga if scaled else 1)
        self._n += 1
        if self.penalty is not None and model.training:
            if getattr(self.penalty, "per_step", False):
                # runs the model: once per update, on the micro-batch after which the optimiser steps;
                # weighted by the accumulation steps to count as one whole update's term
                if self.accelerator.sync_gradients:
                    pen = self.penalty(self.state.global_step)
                    loss = loss + (pen if scaled else pen * ga)
                    self._pen_sum = self._pen_sum + pen.detach() * ga
            else:
                pen = self.penalty()
                loss = loss + (pen / ga if scaled else pen)
                self._pen_sum = self._pen_sum + pen.detach()
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not hasattr(self.hook, "next_inputs"):
            return super().training_step(model, inputs, num_items_in_batch)
        batch = self.hook.next_inputs(inputs)
        if batch is not inputs:  # an alignment batch: its loss is its own token mean
            num_items_in_batch = None
        loss = super().training_step(model, batch, num_items_in_batch)
        self.hook.step_done()
        return loss

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        after = getattr(self.hook, "after_optimizer_step", None)
        if after is not None and not getattr(optimizer, "_asft_after_step", False):
            # on the torch optimiser itself (accelerate may wrap it later; the wrapper calls its step)
            getattr(optimizer, "optimizer", optimizer).register_step_post_hook(lambda *_: after())
            optimizer._asft_after_step = True
        return optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        # StepLR(step_size=1 epoch, gamma) of the reference code, as a per-update LambdaLR.
        if self.lr_gamma is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            optimizer = optimizer or self.optimizer
            per_epoch = self.steps_per_epoch or max(
                1, round(num_training_steps / max(self.args.num_train_epochs, 1e-9)))
            gamma = self.lr_gamma
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: gamma ** (step // per_epoch))
        return self.lr_scheduler

    def flush_sums(self) -> dict:
        """Mean task loss and penalty since the last call (also kept as last_*)."""
        if not self._n:
            return {}
        sums = torch.stack([torch.as_tensor(self._task_sum, dtype=torch.float32).detach().cpu(),
                            torch.as_tensor(self._pen_sum, dtype=torch.float32).detach().cpu()]) / self._n
        if self.accelerator.num_processes > 1:
            # the mean over processes: a rank's loss is its share of the global batch (times the
            # world size when the Trainer averages tokens across devices), so this is the global
            # batch's loss, as one process on the whole batch would log it
            sums = self.accelerator.reduce(sums.to(self.args.device), reduction="mean").cpu()
        self.last_task_loss, self.last_penalty = float(sums[0]), float(sums[1])
        self._reset_sums()
        return {"task_loss": self.last_task_loss, "penalty": self.last_penalty}

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:
            logs.update(self.flush_sums())
        bad = [k for k in ("task_loss", "penalty", "grad_norm")
               if k in logs and not math.isfinite(float(logs[k]))]
        if bad:
            raise AsftError(
                f"{bad[0]} is not finite at step {self.state.global_step} (task loss "
                f"{logs.get('task_loss')}, penalty {logs.get('penalty')}, grad norm "
                f"{logs.get('grad_norm')}); lower --lr or --lam")
        if self.log_path is not None and self.args.process_index == 0:
            append_jsonl(self.log_path, {"step": self.state.global_step, **logs})
        super().log(logs, *args, **kwargs)


@functools.cache
def _make_trainer_class():
    from transformers import Trainer

    class AsftTrainer(AsftMixin, Trainer):
        __doc__ = AsftMixin.__doc__
        label_positions_only = True

    AsftTrainer.__module__, AsftTrainer.__qualname__ = __name__, "AsftTrainer"
    return AsftTrainer


def __getattr__(name: str):
    # AsftTrainer subclasses transformers.Trainer: made on first use, so importing asft.training.train
    # does not import transformers.
    if name == "AsftTrainer":
        return _make_trainer_class()
    raise AttributeError(f"module 'asft.training.trainer' has no attribute {name!r}")
