"""Tokenised training examples as tensors: ``SupervisedDataset`` (records -> input ids and labels with
the prompt masked), ``PadCollator`` and length-grouped batching. Apart from ``asft.data`` (records,
templates, mixes) because this needs torch and the command line reads ``asft.data`` at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from asft.data import IGNORE_INDEX, encode_example
from asft.errors import AsftError

class SupervisedDataset(torch.utils.data.Dataset):
    """Records encoded once up front. ``n_truncated`` counts examples cut at ``max_length``;
    ``n_dropped`` those whose prompt alone fills ``max_length`` (no response token would be
    learned, and a batch of only such examples has a 0/0 loss), which are left out."""

    def __init__(self, records: Sequence[dict], tokenizer: Any, template: str = "alpaca",
                 max_length: int = 512):
        encoded = [encode_example(r, tokenizer, template, max_length) for r in records]
        self.examples = [e for e in encoded if any(l != IGNORE_INDEX for l in e.labels)]
        self.n_dropped = len(encoded) - len(self.examples)
        self.n_truncated = sum(e.truncated for e in encoded)
        if not self.examples:
            raise AsftError(f"every example's prompt is longer than max_length={max_length} tokens: "
                            "raise --max-length")

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator,
                           group: int = 50) -> list[list[int]]:
    """One epoch of batches (indices) with little padding: shuffle, cut into chunks of
    ``group * batch_size``, sort each chunk by length, cut it into batches, shuffle the batches.

    Every index appears exactly once. Why: with chat examples of very different lengths (a
    one-line refusal next to a 200-token answer) a random batch is mostly padding, and padding
    costs as much compute as real tokens (the idea of HF's ``group_by_length``).
    """
    if batch_size < 1:
        raise AsftError(f"batch size must be at least 1, got {batch_size}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = max(1, group) * batch_size
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: -lengths[i])
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


@dataclass
class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with -100, plus an attention mask."""

    pad_token_id: int

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            k = len(b["input_ids"])
            ids[i, :k] = torch.tensor(b["input_ids"])
            labels[i, :k] = torch.tensor(b["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


