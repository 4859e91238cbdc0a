"""Label likelihood: score each candidate label as the continuation of a prompt, one forward pass
per (prompt, label), no generation. A classification shortcut for AG News / SST-2 (``asft eval
--fa-mode likelihood``), off by default: the paper parses generated text, and a model can put the
highest likelihood on a label it would never write (FA by likelihood is its own number).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _continuation_ids(tokenizer: Any, prompt: str, label: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, label ids) such that prompt ids + label ids is how the text prompt + label
    tokenises (a label that merges with the prompt's last characters keeps the prompt's split)."""
    p = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    full = tokenizer(prompt + label, add_special_tokens=add_special_tokens)["input_ids"]
    if full[: len(p)] == p and len(full) > len(p):
        return p, full[len(p):]
    return p, tokenizer(label, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def label_logprobs(model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str],
                   add_special_tokens: bool = True, batch_size: int = 16) -> list[list[float]]:
    """``out[i][j]`` = log p(labels[j] | prompts[i]), summed over the label's tokens (float32 logits)."""
    from asft.generate import pad_id

    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    seqs = []  # (row, label, ids, n_prompt)
    for i, prompt in enumerate(prompts):
        for j, label in enumerate(labels):
            p, c = _continuation_ids(tokenizer, prompt, label, add_special_tokens)
            seqs.append((i, j, p + c, len(p)))
    out = [[0.0] * len(labels) for _ in prompts]
    order = sorted(range(len(seqs)), key=lambda k: -len(seqs[k][2]))  # similar lengths together
    for start in range(0, len(order), batch_size):
        chunk = [seqs[k] for k in order[start:start + batch_size]]
        n = max(len(s[2]) for s in chunk)
        ids = torch.full((len(chunk), n), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), n), dtype=torch.long)
        for r, (_, _, s, _) in enumerate(chunk):  # right padding: positions are those of the text
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, : len(s)] = 1
        # The LM head only where a label token is predicted: over every position it would cost
        # seq x vocab x hidden per row (most of the time, and GBs of logits, for a 49k vocabulary).
        hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        rows = torch.cat([torch.full((len(s) - n_p,), r) for r, (_, _, s, n_p) in enumerate(chunk)])
        cols = torch.cat([torch.arange(n_p - 1, len(s) - 1) for _, _, s, n_p in chunk])
        logits = _head(model, hidden[rows.to(device), cols.to(device)])
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor([t for _, _, s, n_p in chunk for t in s[n_p:]], device=device)
        picked = logp.gather(1, targets[:, None])[:, 0]
        k = 0
        for i, j, s, n_p in chunk:
            out[i][j] = float(picked[k: k + len(s) - n_p].sum())
            k += len(s) - n_p
    return out


def _head(model: Any, hidden: torch.Tensor) -> torch.Tensor:
    """The model's output layer on selected hidden states, float32, with its logit soft-capping."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits
