"""Minimal greedy generation and LoRA SFT for the toy world's own checks.

Private and temporary: the project's shared ``asft.generate`` / ``asft.train`` replace these once
they land. Kept deliberately plain (peft LoRA + a torch loop, ``model.generate`` with left padding).
"""

from __future__ import annotations

from typing import Sequence

import torch

from asft.data import PadCollator, SupervisedDataset, encode_prompt, format_prompt
from asft.toy import judge


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 24,
                    batch_size: int = 64) -> list[str]:
    """Greedy continuations of chat-formatted ``prompts`` (left padded), cut at EOS, decoded."""
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    out = []
    for i in range(0, len(prompts), batch_size):
        ids = [encode_prompt(tokenizer, p, "chat") for p in prompts[i:i + batch_size]]
        n = max(map(len, ids))
        x = torch.tensor([[pad] * (n - len(s)) + s for s in ids])
        mask = torch.tensor([[0] * (n - len(s)) + [1] * len(s) for s in ids])
        y = model.generate(input_ids=x, attention_mask=mask, max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=pad, eos_token_id=eos)
        out += tokenizer.batch_decode(y[:, n:], skip_special_tokens=True)
    return [" ".join(s.split()) for s in out]


def evaluate(model, tokenizer, harmful: Sequence[dict] = (), task: Sequence[dict] = (),
             max_new_tokens: int = 24) -> dict:
    """``{"hs": %, "fa": %}`` on held-out harmful prompts and a task test set (chat template)."""
    res = {}
    if harmful:
        qs = [r["instruction"] for r in harmful]
        ans = greedy_generate(model, tokenizer, [format_prompt(r, "chat", tokenizer) for r in harmful],
                              max_new_tokens)
        res["hs"] = judge.harmful_score(qs, ans)
    if task:
        ans = greedy_generate(model, tokenizer, [format_prompt(r, "chat", tokenizer) for r in task],
                              max_new_tokens)
        res["fa"] = judge.task_accuracy(ans, [r["label"] for r in task])
    return res


def lora_sft(model, tokenizer, records: Sequence[dict], r: int = 8, alpha: int = 16,
             target_modules: Sequence[str] = ("q_proj", "v_proj"), lr: float = 1e-3,
             epochs: int = 3, batch_size: int = 16, seed: int = 0):
    """Plain LoRA SFT (no penalty) on chat-formatted records; returns the trained PeftModel."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0,
                                                  target_modules=list(target_modules),
                                                  task_type="CAUSAL_LM"))
    data = SupervisedDataset(records, tokenizer, "chat", max_length=128)
    collate = PadCollator(tokenizer.pad_token_id)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    peft_model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen).tolist()
        for i in range(0, len(order), batch_size):
            loss = peft_model(**collate([data[j] for j in order[i:i + batch_size]])).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    peft_model.eval()
    return peft_model
