"""TRL's ``SFTTrainer`` with the AsFT penalty: ``AsftSFTTrainer(..., penalty=AsftPenalty)``.

TRL computes its own loss (and its token accuracy / entropy metrics); the penalty is added on top,
once per optimiser update whatever the gradient accumulation, and logged as ``penalty`` beside the
task loss (``task_loss``), like ``asft.AsftTrainer``::

    from peft import LoraConfig
    from trl import SFTConfig
    from asft.integrations.trl import AsftSFTTrainer
    trainer = AsftSFTTrainer(model=model, args=SFTConfig(...), train_dataset=ds,
                             peft_config=LoraConfig(...), penalty_factory=lambda peft_model:
                                 asft.AsftPenalty.from_model(peft_model, anchor, lam=1.0))

``penalty_factory`` receives the model once TRL has wrapped it with LoRA (pass ``penalty=`` instead
when the model is already a PEFT model).
"""

from __future__ import annotations

import functools

from asft.errors import AsftError


@functools.cache
def _trainer_class():
    try:
        from trl import SFTTrainer
    except ImportError:
        raise AsftError("asft.integrations.trl needs TRL: pip install trl (or asft[trl])") from None
    from asft.training.trainer import AsftMixin

    class AsftSFTTrainer(AsftMixin, SFTTrainer):
        def __init__(self, *args, penalty=None, penalty_factory=None, **kwargs):
            if penalty is not None and penalty_factory is not None:
                raise AsftError("pass penalty or penalty_factory, not both")
            super().__init__(*args, penalty=penalty, **kwargs)
            if penalty_factory is not None:
                self.penalty = penalty_factory(self.model)

    AsftSFTTrainer.__module__, AsftSFTTrainer.__qualname__ = __name__, "AsftSFTTrainer"
    AsftSFTTrainer.__doc__ = __doc__
    return AsftSFTTrainer


def __getattr__(name: str):
    if name == "AsftSFTTrainer":
        return _trainer_class()
    raise AttributeError(f"module 'asft.integrations.trl' has no attribute {name!r}")
