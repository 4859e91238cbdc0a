"""Label likelihood: score each candidate label as the continuation of a prompt, no generation. A
classification shortcut for AG News / SST-2 (``asft eval --fa-mode likelihood``), off by default: the
paper parses generated text, and a model can put the highest likelihood on a label it would never
write (FA by likelihood is its own number).

Each prompt is encoded once (its KV cache is shared by its labels); the labels then run as one
short batch on top of it, and the output layer is applied only where a label token is predicted.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _label_ids(tokenizer: Any, prompt_ids: list[int], prompt: str, label: str, add_special_tokens: bool) -> list[int]:
    """The label's tokens as they follow this prompt: from tokenising prompt + label when that keeps
    the prompt's own tokens, else the label alone."""
    full = tokenizer(prompt + label, add_special_tokens=add_special_tokens)["input_ids"]
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):]
    return tokenizer(label, add_special_tokens=False)["input_ids"]


def _head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output layer on selected hidden states, float32, with its logit soft-capping."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


@torch.no_grad()
def label_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str],
                   add_special_tokens: bool = True, batch_size: int = 16) -> list[list[float]]:
    """``out[i][j]`` = log p(labels[j] | prompts[i]), summed over the label's tokens."""
    from transformers import DynamicCache

    from asft.models.generate import left_pad, pad_id, position_ids_from_mask

    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    enc = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    lab = [[_label_ids(tokenizer, e, p, l, add_special_tokens) for l in labels] for p, e in zip(prompts, enc)]
    order = sorted(range(len(prompts)), key=lambda i: -len(enc[i]))  # similar lengths together
    out = [[0.0] * len(labels) for _ in prompts]
    L = len(labels)
    decoder = model.get_decoder()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = left_pad([enc[i] for i in idx], pad)
        ids, mask = ids.to(device), mask.to(device)
        cache = DynamicCache(config=model.config)
        h = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                    past_key_values=cache, use_cache=True).last_hidden_state[:, -1]
        first = torch.log_softmax(_head(model, h), -1)  # (b, vocab): predicts each label's first token
        # every (prompt, label) row on top of its prompt's cache; labels right-padded to one length
        cache.batch_repeat_interleave(L)
        rows = [(r, j) for r in range(len(idx)) for j in range(L)]
        n = max(len(lab[idx[r]][j]) for r, j in rows)
        cont = torch.full((len(rows), n), pad, dtype=torch.long)
        cmask = torch.zeros((len(rows), n), dtype=torch.long)
        for k, (r, j) in enumerate(rows):
            t = lab[idx[r]][j]
            cont[k, : len(t)] = torch.tensor(t)
            cmask[k, : len(t)] = 1
        full_mask = torch.cat([mask.repeat_interleave(L, 0), cmask.to(device)], 1)
        pos = position_ids_from_mask(full_mask)[:, -n:]
        hc = decoder(input_ids=cont.to(device), attention_mask=full_mask, position_ids=pos,
                     past_key_values=cache, use_cache=True).last_hidden_state
        # token t > 0 of a label is predicted at position t - 1 of its continuation
        sel = [(k, t) for k, (r, j) in enumerate(rows) for t in range(len(lab[idx[r]][j]) - 1)]
        later = torch.log_softmax(_head(model, hc[[k for k, _ in sel], [t for _, t in sel]]), -1) if sel else None
        s = 0
        for k, (r, j) in enumerate(rows):
            t = lab[idx[r]][j]
            total = float(first[r, t[0]])
            for tok in t[1:]:
                total += float(later[s, tok])
                s += 1
            out[idx[r]][j] = total
    return out
