"""Tiny random Llama checkpoints for tests (no downloads). Import from any test module:

    from _models import make_llama_pair
    base_dir, aligned_dir = make_llama_pair(tmp_path)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


def tiny_llama_config(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 128,
                      **overrides):
    """The one tiny ``LlamaConfig`` of the test suite (intermediate = 2 * hidden, untied embeddings);
    ``overrides`` are further ``LlamaConfig`` fields (special token ids, max positions, labels)."""
    from transformers import LlamaConfig

    cfg = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        vocab_size=vocab,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    cfg.update(overrides)
    return LlamaConfig(**cfg)


def _save(model, path: Path, shards: int) -> None:
    if shards > 1:
        total = sum(p.numel() * p.element_size() for p in model.state_dict().values())
        # +1 KiB slack so that `shards` chunks hold everything; a tensor bigger than the limit gets its own shard.
        model.save_pretrained(path, max_shard_size=math.ceil(total / shards) + 1024)
    else:
        model.save_pretrained(path)


def make_llama_pair(
    tmp_dir,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    shards: int = 1,
) -> tuple[Path, Path]:
    """Save a random LlamaForCausalLM ``tmp_dir/base`` and ``tmp_dir/aligned`` = base + small noise.

    Every weight of the aligned model differs from the base by N(0, 0.01^2) noise (seeded), so
    ``aligned - base`` is a dense, full-rank direction. ``shards > 1`` writes sharded safetensors with
    ``model.safetensors.index.json`` (at least 2 shard files). Returns ``(base_dir, aligned_dir)``.
    """
    from transformers import LlamaForCausalLM

    tmp_dir = Path(tmp_dir)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(hidden, layers, heads, kv_heads, vocab)).eval()
    base_dir, aligned_dir = tmp_dir / "base", tmp_dir / "aligned"
    _save(model, base_dir, shards)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    _save(model, aligned_dir, shards)
    return base_dir, aligned_dir
