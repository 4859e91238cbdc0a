"""Defences the paper compares AsFT with, each one file (all take safety demonstrations, records of
a harmful request answered with a refusal, never the evaluation prompts):

``safeinstr``  SafeInstr (Bianchi et al. 2024): safety demonstrations mixed into the fine-tuning data.
``bea``        Backdoor Enhanced Alignment (Wang et al. 2024): the demonstrations carry a secret
               trigger (random tokens) at the head of the system prompt; the trigger is prepended
               to every prompt at inference (``asft eval`` reads it from the adapter folder).
``lisa``       Lisa (Huang et al. 2024): alternating alignment / fine-tuning states with a proximal
               term between them (``asft.baselines.lisa``, imported on use: it needs torch).
``asft.safelora``  Safe LoRA (Hsu et al. 2024), post-hoc, lives in its own module (it predates this one).

The alignment-stage defences (Vaccine, Booster) are out of scope: they change how the model is
aligned, not how it is fine-tuned.
"""

from asft.baselines.bea import make_trigger, with_trigger
from asft.baselines.safeinstr import mix_safety

__all__ = ["make_trigger", "mix_safety", "with_trigger"]
