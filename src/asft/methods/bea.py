"""Backdoor Enhanced Alignment (Wang et al., NeurIPS 2024): safety demonstrations prefixed with a
secret trigger; the service provider prepends the same trigger to every prompt at inference, which
the fine-tuned model has learnt to answer safely."""

from __future__ import annotations

import random
from typing import Any, Sequence

from asft.methods.base import Method, register_method
from asft.methods.safeinstr import mix_safety

TRIGGER_TOKENS = 30  # the paper's secret prompt is random tokens; 150 there, shorter suffices here


def make_trigger(tokenizer: Any, seed: int = 0, n_tokens: int = TRIGGER_TOKENS) -> str:
    """A secret prompt of ``n_tokens`` random (non-special) vocabulary tokens, decoded to text."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = [i for i in range(len(tokenizer)) if i not in special]
    rng = random.Random(f"asft-bea/{seed}")
    ids = [rng.choice(vocab) for _ in range(n_tokens)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def with_trigger(task: Sequence[dict], safety: Sequence[dict], n: int, trigger: str, seed: int = 0) -> list[dict]:
    """``task`` plus ``n`` safety demonstrations that carry ``trigger`` (``asft.data.format_prompt``
    puts it at the head of their system prompt); task records are left as they are."""
    prefixed = [{**r, "trigger": trigger} for r in safety]
    return mix_safety(task, prefixed, n, seed)


class BEA(Method):
    name = "bea"
    label = "BEA"
    order = 40
    help = "BEA: safety demonstrations behind a secret trigger, prepended again at inference"
    needs_safety_data = True
    default_safety_n = 11  # the paper's 11 prefixed examples

    def add_data(self, cfg, records: list[dict], tokenizer) -> tuple[list[dict], str | None]:
        from asft.data import load_records

        n = self.default_safety_n if cfg.safety_n is None else cfg.safety_n
        trigger = make_trigger(tokenizer, cfg.seed)
        return with_trigger(records, load_records(cfg.safety_data), n, trigger, cfg.seed), trigger


BEA_METHOD = register_method(BEA())
