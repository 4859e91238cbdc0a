"""Batched greedy generation: the engine behind ``asft eval``.

The reference scripts generate one prompt at a time. Here prompts are tokenized exactly as
``asft.data.encode_prompt`` does (chat templates carry their own BOS), sorted by length so that each
batch holds prompts of similar length (little padding), left-padded (so every row's next token is
at the last position), and decoded greedily with the KV cache; each sequence stops at its own EOS
and a batch ends when all of its sequences have. Results come back in the original order.

Greedy decoding on a batch is the same computation as on one prompt up to floating-point rounding
of padded matrix shapes; ``tests/test_generate.py`` checks the outputs are identical in float32.

An optional vLLM back end (``VLLMGenerator``, ``--engine vllm``) takes the same token ids.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from asft.errors import AsftError

# on_batch(indices into the prompt list, their decoded responses): called after every batch, so the
# caller can checkpoint finished work; a crash then loses at most one batch.
OnBatch = Callable[[list[int], list[str]], None]


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token id that ends a response: the generation config's (Llama-3 has two) + tokenizer's."""
    ids: list[int] = []
    gen_cfg = getattr(model, "generation_config", None)
    for value in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if v is not None and v not in ids:
                ids.append(int(v))
    return ids


def pad_id(tokenizer: Any) -> int:
    """The id used for padding: pad token, else EOS (padded positions are masked either way)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def left_pad(seqs: Sequence[Sequence[int]], pad: int):
    """Left-pad token id lists into ``(input_ids, attention_mask)``, LongTensors of shape (batch, max_len)."""
    import torch

    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, n - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, n - len(s):] = 1
    return ids, mask


def position_ids_from_mask(mask):
    """Positions counted from each row's first real token: (batch, len) -> (batch, len), 0 on padding."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _cut_at_eos(ids: list[int], stop: set[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in stop:
            return ids[:k]
    return ids


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 256,
             batch_size: int = 16, add_special_tokens: bool = True, *, eos_token_id: int | list[int] | None = None,
             on_batch: OnBatch | None = None, progress: bool = True, desc: str = "generating") -> list[str]:
    """Greedy responses to ``prompts`` (decoded new tokens, special tokens dropped, stripped).

    ``add_special_tokens``: False for chat-template prompts (they carry their own BOS), as in
    ``asft.data.encode_prompt``. ``eos_token_id`` overrides the stop ids (default: ``eos_ids``).
    On CUDA out-of-memory the batch is retried at half the size.
    """
    import torch
    from transformers import GenerationConfig

    if batch_size < 1:
        raise AsftError(f"batch size must be >= 1, got {batch_size}")
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise AsftError("generate: an empty prompt has no tokens to condition on")
    stop = ([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)) \
        if eos_token_id is not None else eos_ids(model, tokenizer)
    pad = pad_id(tokenizer)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=stop or None, pad_token_id=pad, use_cache=True)
    device = next(model.parameters()).device
    # Longest first: an out-of-memory error shows up in the first batch, not after an hour.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[str | None] = [None] * len(prompts)
    from asft.progress import Progress

    bar = Progress(len(prompts), desc, "prompts", enabled=progress)
    was_training = model.training
    model.eval()
    try:
        start, bs = 0, batch_size
        while start < len(order):
            idx = order[start:start + bs]
            input_ids, mask = left_pad([encoded[i] for i in idx], pad)
            try:
                with torch.inference_mode():
                    out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                         generation_config=gen_cfg)
            except torch.cuda.OutOfMemoryError:
                if bs == 1:
                    raise
                bs = max(1, bs // 2)
                torch.cuda.empty_cache()
                continue
            new = out[:, input_ids.shape[1]:].tolist()
            texts = [tokenizer.decode(_cut_at_eos(row, set(stop)), skip_special_tokens=True).strip()
                     for row in new]
            for i, t in zip(idx, texts):
                results[i] = t
            if on_batch is not None:
                on_batch(list(idx), texts)
            bar.advance(len(idx))
            start += len(idx)
    finally:
        bar.close()
        model.train(was_training)
    return [r if r is not None else "" for r in results]


class VLLMGenerator:
    """vLLM back end (optional dependency): same prompts, same token ids, greedy, LoRA via LoRARequest.

    Untested here (no GPU/vLLM in CI); kept small on purpose. Built from folders, not a loaded model.
    """

    def __init__(self, model_dir: str | Path, adapter_dir: str | Path | None = None,
                 dtype: str = "bfloat16", max_lora_rank: int = 64, gpu_memory_utilization: float = 0.9):
        try:
            from vllm import LLM
        except ImportError:
            raise AsftError("--engine vllm needs the vllm package (pip install 'asft[vllm]')") from None
        self.adapter_dir = str(adapter_dir) if adapter_dir else None
        self.llm = LLM(model=str(model_dir), dtype=dtype, enable_lora=bool(adapter_dir),
                       max_lora_rank=max_lora_rank, gpu_memory_utilization=gpu_memory_utilization)
        self.tokenizer = self.llm.get_tokenizer()

    def __call__(self, prompts: Sequence[str], max_new_tokens: int, add_special_tokens: bool = True,
                 on_batch: OnBatch | None = None, desc: str = "") -> list[str]:
        from vllm import SamplingParams

        lora = None
        if self.adapter_dir:
            from vllm.lora.request import LoRARequest

            lora = LoRARequest("adapter", 1, self.adapter_dir)
        token_prompts = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]}
                         for p in prompts]
        params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, skip_special_tokens=True)
        outs = self.llm.generate(token_prompts, params, lora_request=lora)
        texts = [o.outputs[0].text.strip() for o in outs]
        if on_batch is not None:
            on_batch(list(range(len(prompts))), texts)
        return texts
