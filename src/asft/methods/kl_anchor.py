"""``kl-anchor`` (SafeGrad's alignment term, arXiv 2508.07172): keep the model's next-token
distributions on safety demonstrations where the aligned model had them.

``lam * KL(pi_aligned || pi_theta)`` per response token of the demonstrations of ``--safety-data``
(prompt + refusal, formatted as in training), summed over the vocabulary and averaged over the
response tokens of ``--anchor-batch`` demonstrations per optimiser update (rotating over the
K = ``--safety-n``, default 32). The aligned model's log-probabilities are computed once (adapter
disabled) and kept on the training device: K x response tokens x vocabulary floats (32 x 30 x 49k
x 4 bytes = 190 MB for SmolLM2). The output layer runs only at the response positions.
"""

from __future__ import annotations

from asft.methods.base import Method, register_method


class KlAnchorPenalty:
    per_step = True

    def __init__(self, model, batches: list[dict], lam: float, batch: int):
        self.model, self.lam, self.batch = model, float(lam), batch
        self.examples = batches  # one dict per demonstration: input_ids (T,), labels (T,)
        self.refs = None  # per demonstration: (n_t, V) log-probabilities of the aligned model

    def _logprobs(self, idx: list[int], device):
        """Log-probabilities (sum n_t, V) at the response positions of demonstrations ``idx``, and their counts."""
        import torch

        from asft.batches import PadCollator
        from asft.models.modeling import accepts_logits_to_keep

        batch = PadCollator(0)([self.examples[i] for i in idx])
        ids, mask, labels = (batch[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
        keep = torch.zeros_like(labels, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100   # position t predicts token t + 1
        if accepts_logits_to_keep(self.model):
            logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
            logits = logits.reshape(-1, logits.shape[-1])
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits[keep]
        return torch.log_softmax(logits.float(), -1), keep.sum(1).tolist()

    def references(self, device):
        import torch

        from asft.methods.anchors import aligned_eval

        refs = []
        with torch.no_grad(), aligned_eval(self.model):
            for s in range(0, len(self.examples), 8):
                lp, counts = self._logprobs(list(range(s, min(s + 8, len(self.examples)))), device)
                refs += list(torch.split(lp, counts))
        self.refs = refs

    def __call__(self, step: int):
        import torch

        from asft.methods.anchors import rotation

        idx = rotation(step, self.batch, len(self.examples))
        ref = torch.cat([self.refs[i] for i in idx])
        lp, _ = self._logprobs(idx, ref.device)
        kl = (ref.exp() * (ref - lp)).sum(-1)       # KL(aligned || theta) per response token
        return self.lam * kl.mean()


class KlAnchor(Method):
    name = "kl-anchor"
    label = "kl-anchor"
    order = 84
    help = "task loss + lam * KL(aligned || model) on the responses of --safety-data"
    marker = "X"
    takes_lambda = True
    needs_safety_data = True
    default_safety_n = 32
    shardable = False  # runs the unwrapped model on its own demonstrations
    fsdp = "it runs the model on its own demonstrations inside the step, not made under sharding yet"

    def build_hook(self, cfg, model, tokenizer, args, batches_per_epoch: int):
        from asft.batches import SupervisedDataset
        from asft.methods.anchors import PenaltyHook, draw_safety

        records = draw_safety(cfg, self.default_safety_n)
        ds = SupervisedDataset(records, tokenizer, cfg.template, cfg.max_length)
        pen = KlAnchorPenalty(model, [ds[i] for i in range(len(ds))], cfg.lam, cfg.anchor_batch)
        pen.references(next(model.parameters()).device)
        return PenaltyHook(pen, {"safety_records": len(records)})

    def describe_penalty(self, cfg: dict) -> str:
        return f"λ = {cfg.get('lam')}, KL to the aligned model on the responses of {cfg.get('safety_data')}"


KL_ANCHOR = register_method(KlAnchor())
