"""Model construction and the two full-weight training stages of the toy world (pure torch).

``pretrain``: next-token loss on packed pre-training documents (the web, harmful answers included).
``align``:    supervised fine-tuning of ALL weights on chat records with the loss on responses only
              (benign -> helpful, harmful -> refusal), replaying plain pre-training text at each
              step so that the model keeps what it knows and only learns to refuse. ``aligned - base``
              is then an alignment direction made the way real chat models get theirs.
Both are seeded; on CPU the weights come out bit-identical run to run (also across 1 and 2 threads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch


@dataclass(frozen=True)
class ModelShape:
    """Llama dimensions of a toy model (head_dim = hidden // heads)."""

    hidden: int = 96
    layers: int = 3
    intermediate: int = 192
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention, as in Llama 2/3: v_proj is (kv_heads*head_dim, hidden)
    max_positions: int = 128


def make_model(shape: ModelShape, tokenizer, seed: int):
    """A freshly initialised ``LlamaForCausalLM`` for ``tokenizer``'s vocabulary (untied head)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _optimizer(model, lr: float) -> torch.optim.Optimizer:
    # No weight decay on norms (1-d weights), as in nanoGPT.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))


def _run(model, batches, steps: int, lr: float, warmup: int,
         log: Callable[[int, float], None] | None) -> list[float]:
    opt = _optimizer(model, lr)
    model.train()
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        loss = sum(w * model(**b).loss for w, b in next(batches))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if log is not None:
            log(step, losses[-1])
    model.eval()
    return losses


def pretrain(model, token_ids: Sequence[int], steps: int, lr: float = 3e-3, batch_size: int = 32,
             seq_len: int = 64, seed: int = 0, log=None) -> list[float]:
    """Next-token training on ``token_ids`` (all documents concatenated) cut into ``seq_len`` rows.

    Rows are drawn without replacement, epoch after epoch, in a seeded order. Returns step losses.
    """
    batches = ([(1.0, b)] for b in _packed_batches(token_ids, batch_size, seq_len, seed))
    return _run(model, batches, steps, lr, warmup=max(1, steps // 20), log=log)


def _packed_batches(token_ids: Sequence[int], batch_size: int, seq_len: int, seed: int):
    """Endless ``{"input_ids","labels"}`` batches of (batch_size, seq_len) rows, seeded epochs."""
    n_rows = len(token_ids) // seq_len
    rows = torch.tensor(token_ids[: n_rows * seq_len], dtype=torch.long).view(n_rows, seq_len)
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n_rows, generator=gen)
        for i in range(0, n_rows - batch_size + 1, batch_size):
            x = rows[order[i:i + batch_size]]
            yield {"input_ids": x, "labels": x}


def align(model, dataset, pad_token_id: int, steps: int, lr: float = 1e-3, batch_size: int = 32,
          seed: int = 0, replay_ids: Sequence[int] | None = None, replay_weight: float = 1.0,
          seq_len: int = 64, log=None) -> list[float]:
    """Full-weight SFT on a ``SupervisedDataset`` (labels masked on the prompt). Returns losses.

    ``replay_ids``: pre-training tokens (plain, non-chat documents) replayed with weight
    ``replay_weight`` at every step, as alignment pipelines mix in pre-training data: the model
    keeps its knowledge (including the harmful kind) and learns only the refusal behaviour.
    """
    from asft.batches import PadCollator

    collate = PadCollator(pad_token_id)
    gen = torch.Generator().manual_seed(seed)

    def sft_batches():
        while True:
            order = torch.randperm(len(dataset), generator=gen).tolist()
            for i in range(0, len(order) - batch_size + 1, batch_size):
                yield collate([dataset[j] for j in order[i:i + batch_size]])

    if replay_ids:
        replay = _packed_batches(replay_ids, batch_size, seq_len, seed + 1)
        batches = ([(1.0, b), (replay_weight, next(replay))] for b in sft_batches())
    else:
        batches = ([(1.0, b)] for b in sft_batches())
    return _run(model, batches, steps, lr, warmup=max(1, steps // 20), log=log)
