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

import functools

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


def _stop_ids(model: Any, tokenizer: Any, eos_token_id: int | list[int] | None) -> list[int]:
    """The ids that end a response: ``eos_token_id`` when given, else ``eos_ids``."""
    if eos_token_id is None:
        return eos_ids(model, tokenizer)
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


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


@functools.cache
def _roomy_layer_class():
    """A ``DynamicLayer`` whose keys and values are views into buffers with room to grow along the
    sequence: appending a token writes in place. The plain layer concatenates, copying the whole
    cache every step (at 64 rows x 400 tokens, SmolLM2: 378.5 ms per decode step, 315.6 with room;
    the same tokens; benchmarks/decode_profile.py). Keys or values replaced from outside (rows
    leaving, caches merged) are adopted into a new buffer at the next append."""
    from transformers.cache_utils import DynamicLayer

    class RoomyLayer(DynamicLayer):
        ROOM = 64  # tokens of room added whenever a buffer is (re)made

        def lazy_initialization(self, key_states, value_states):
            super().lazy_initialization(key_states, value_states)
            self._kbuf = self._vbuf = self._view = None
            self._n = 0

        def _adopt(self, extra: int, k_like, v_like) -> None:
            keys, values = self.keys, self.values
            n = keys.shape[-2] if keys.numel() else 0
            b, h, _, d = k_like.shape
            cap = n + extra + self.ROOM
            kbuf, vbuf = k_like.new_empty(b, h, cap, d), v_like.new_empty(b, h, cap, v_like.shape[-1])
            if n:
                kbuf[:, :, :n], vbuf[:, :, :n] = keys, values
            self._kbuf, self._vbuf, self._n = kbuf, vbuf, n

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            m = key_states.shape[-2]
            if (self._kbuf is None or self.keys is not self._view
                    or self._kbuf.shape[0] != key_states.shape[0]):
                self._adopt(m, key_states, value_states)
            elif self._n + m > self._kbuf.shape[-2]:
                self._adopt(max(m, self._kbuf.shape[-2]), key_states, value_states)  # double the room
            n = self._n
            self._kbuf[:, :, n:n + m] = key_states
            self._vbuf[:, :, n:n + m] = value_states
            self._n = n + m
            self.keys, self.values = self._kbuf[:, :, :self._n], self._vbuf[:, :, :self._n]
            self._view = self.keys
            return self.keys, self.values

    return RoomyLayer


def _new_cache(model):
    """A DynamicCache for ``model`` whose plain layers have room to grow (``_roomy_layer_class``)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    roomy = _roomy_layer_class()
    cache.layers = [roomy() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _mergeable(cache) -> bool:
    """Rows of another prefill can join this cache (plain per-token KV layers only; sliding-window
    layers drop old tokens, so their lengths cannot be aligned by padding)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) in (DynamicLayer, _roomy_layer_class()) for layer in layers)


def _merge(cache, other, pad_self: int, pad_other: int) -> None:
    """Append ``other``'s rows to ``cache``, left-padding the shorter one along the sequence."""
    import torch

    for a, b in zip(cache.layers, other.layers):
        ka, va, kb, vb = a.keys, a.values, b.keys, b.values
        if pad_self:
            ka = torch.nn.functional.pad(ka, (0, 0, pad_self, 0))
            va = torch.nn.functional.pad(va, (0, 0, pad_self, 0))
        if pad_other:
            kb = torch.nn.functional.pad(kb, (0, 0, pad_other, 0))
            vb = torch.nn.functional.pad(vb, (0, 0, pad_other, 0))
        a.keys, a.values = torch.cat([ka, kb]), torch.cat([va, vb])


class _Decoder:
    """Greedy decoding of many prompts with one KV cache whose rows come and go.

    A row leaves the batch the step it finishes (its EOS, its token budget, or ``stop``), so no
    compute is spent on finished rows; when the batch has shrunk to half, the next prompts (in the
    given order, longest first) are prefilled and join it (for caches that allow it, ``_mergeable``),
    so the batch stays full. Each row attends only to its own tokens (attention mask) at its own
    positions, so the result is the same greedy decoding as one prompt at a time, up to the
    floating-point rounding of batched matrix shapes (checked: identical in float32).
    """

    def __init__(self, model, pad: int, stop_ids: set[int], max_new: int, batch_size: int, stop=None):
        self.model, self.pad, self.stop_ids, self.max_new = model, pad, stop_ids, max_new
        self.batch_size, self.stop = batch_size, stop
        self.device = next(model.parameters()).device

    def _forward(self, ids, mask, cache):
        import torch

        pos = position_ids_from_mask(mask)[:, -ids.shape[1]:]
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].float().argmax(-1), out.past_key_values

    def _prefill(self, seqs):
        ids, mask = left_pad(seqs, self.pad)
        ids, mask = ids.to(self.device), mask.to(self.device)
        nxt, cache = self._forward(ids, mask, _new_cache(self.model))
        return nxt, cache, mask

    def run(self, encoded: Sequence[Sequence[int]], order: Sequence[int], on_done) -> None:
        """Decode ``encoded[i]`` for every i in ``order``; ``on_done(i, token_ids)`` as each finishes."""
        import torch

        queue = list(order)[::-1]  # pop() takes the next one
        rows: list[int] = []       # prompt index of each cache row
        out: dict[int, list[int]] = {}
        cache = mask = nxt = None
        while queue or rows:
            if queue and (not rows or (len(rows) <= self.batch_size // 2 and _mergeable(cache))):
                take = [queue.pop() for _ in range(min(self.batch_size - len(rows), len(queue)))]
                n2, c2, m2 = self._prefill([encoded[i] for i in take])
                if rows:
                    pad_self, pad_other = max(0, m2.shape[1] - mask.shape[1]), max(0, mask.shape[1] - m2.shape[1])
                    _merge(cache, c2, pad_self, pad_other)
                    mask = torch.cat([torch.nn.functional.pad(mask, (pad_self, 0)),
                                      torch.nn.functional.pad(m2, (pad_other, 0))])
                    nxt = torch.cat([nxt, n2])
                else:
                    cache, mask, nxt = c2, m2, n2
                rows += take
                for i in take:
                    out[i] = []
            keep = []
            for j, (i, t) in enumerate(zip(rows, nxt.tolist())):
                if t in self.stop_ids:
                    on_done(i, out.pop(i))
                    continue
                out[i].append(t)
                if len(out[i]) >= self.max_new or (self.stop is not None and self.stop(i, out[i])):
                    on_done(i, out.pop(i))
                else:
                    keep.append(j)
            if len(keep) < len(rows):
                rows = [rows[j] for j in keep]
                if not rows:
                    cache = mask = nxt = None
                    continue
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, nxt = mask[idx], nxt[idx]
                lead = int((mask.sum(0) == 0).long().cumprod(0).sum())  # columns padding in every row
                if lead and _mergeable(cache):  # drop them (sliding-window layers keep their own)
                    mask = mask[:, lead:]
                    for layer in cache.layers:
                        layer.keys, layer.values = layer.keys[:, :, lead:], layer.values[:, :, lead:]
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
            nxt, cache = self._forward(nxt[:, None], mask, cache)


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 256,
             batch_size: int = 16, add_special_tokens: bool = True, *, eos_token_id: int | list[int] | None = None,
             on_batch: OnBatch | None = None, progress: bool = True, desc: str = "generating",
             stop: Callable[[int, list[int]], bool] | None = None) -> list[str]:
    """Greedy responses to ``prompts`` (decoded new tokens, special tokens dropped, stripped).

    ``add_special_tokens``: False for chat-template prompts (they carry their own BOS), as in
    ``asft.data.encode_prompt``. ``eos_token_id`` overrides the stop ids (default: ``eos_ids``).
    ``stop(i, token_ids)``: end prompt i's response early (a metric that can no longer change).
    ``on_batch`` is called as responses finish (in groups of up to ``batch_size``).
    """
    import torch

    if batch_size < 1:
        raise AsftError(f"batch size must be >= 1, got {batch_size}")
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    if any(len(e) == 0 for e in encoded):
        raise AsftError("generate: an empty prompt has no tokens to condition on")
    stop_ids = _stop_ids(model, tokenizer, eos_token_id)
    # Longest first: an out-of-memory error shows up in the first batch, not after an hour.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results: list[str | None] = [None] * len(prompts)
    from asft.progress import Progress

    bar = Progress(len(prompts), desc, "prompts", enabled=progress)
    pending: list[tuple[int, str]] = []

    def flush() -> None:
        if on_batch is not None and pending:
            on_batch([i for i, _ in pending], [t for _, t in pending])
        bar.advance(len(pending))
        pending.clear()

    def done(i: int, ids: list[int]) -> None:
        results[i] = tokenizer.decode(ids, skip_special_tokens=True).strip()
        pending.append((i, results[i]))
        if len(pending) >= batch_size:
            flush()

    was_training = model.training
    model.eval()
    bs = batch_size
    try:
        while True:
            todo = [i for i in order if results[i] is None]
            if not todo:
                break
            try:
                _Decoder(model, pad_id(tokenizer), set(stop_ids), max_new_tokens, bs, stop).run(encoded, todo, done)
            except torch.cuda.OutOfMemoryError:
                if bs == 1:
                    raise
                bs = max(1, bs // 2)  # finished responses are kept; the rest restart at half the batch
                torch.cuda.empty_cache()
        flush()
    finally:
        bar.close()
        model.train(was_training)
    return [r if r is not None else "" for r in results]


def generate_reference(model: Any, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int = 256,
                       batch_size: int = 16, add_special_tokens: bool = True,
                       eos_token_id: int | list[int] | None = None) -> list[str]:
    """The previous engine, kept as the benchmarks' and tests' yardstick: ``model.generate`` on
    length-sorted, left-padded batches (every row computed until the whole batch has finished).
    ``batch_size=1`` is the reference scripts' way, one prompt at a time."""
    import torch
    from transformers import GenerationConfig

    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    stop = _stop_ids(model, tokenizer, eos_token_id)
    pad = pad_id(tokenizer)
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               eos_token_id=stop or None, pad_token_id=pad, use_cache=True)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    results = [""] * len(prompts)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, mask = left_pad([encoded[i] for i in idx], pad)
        with torch.inference_mode():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                 generation_config=gen_cfg)
        for i, row in zip(idx, out[:, input_ids.shape[1]:].tolist()):
            results[i] = tokenizer.decode(_cut_at_eos(row, set(stop)), skip_special_tokens=True).strip()
    return results


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
                 on_batch: OnBatch | None = None, desc: str = "", decided=None) -> list[str]:
        # decided (early stops) is not applied: vLLM generates each answer to its end
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
