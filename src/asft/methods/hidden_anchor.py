"""``hidden-anchor`` (SBR, arXiv 2605.05995, soyoaaa/SBR ``HFT_SBR.py``): keep the model's state on
harmful prompts where the aligned model had it.

``lam * mean_p ||h_L(p; theta) - h_L(p; theta_aligned)||^2`` at the last prompt token of the harmful
prompts p of ``--safety-data`` (their instruction, formatted as in training, generation prompt
included), at the hidden-state indices ``--anchor-layers`` (default -1, the last, as SBR; several are
averaged). SBR's ``F.mse_loss`` is this divided by the hidden size d (a mean over dimensions), so its
``REG_ALPHA = 50`` is lam = 50 / d here. The references are computed once, with the adapter disabled.

Cost: SBR runs the whole model (output layer included) on all its prompts at every micro-batch. Here
the decoder body alone runs (no output layer), once per optimiser update, on ``--anchor-batch``
(default 2) prompts of the K = ``--safety-n`` (default 32) drawn, rotating so that each is used every
K / batch updates: the same objective in expectation over the updates, at 1.23x a plain LoRA step on
SmolLM2-135M (batch 8 of SST-2; 1.77x at 8 prompts; ``benchmarks/results/anchor_cost_*.json``).
"""

from __future__ import annotations

from asft.errors import AsftError
from asft.methods.base import Method, register_method


def parse_layers(values) -> list[int]:
    try:
        layers = [int(v) for v in values]
    except (TypeError, ValueError):
        raise AsftError(f"--anchor-layers takes hidden-state indices (integers), got {values!r}") from None
    if not layers:
        raise AsftError("--anchor-layers needs at least one index")
    return layers


class HiddenAnchorPenalty:
    """The per-step term (``per_step``: the trainer calls it once per optimiser update with the step)."""

    per_step = True

    def __init__(self, model, prompts: dict, refs, layers: list[int], lam: float, batch: int):
        self.model, self.prompts, self.refs = model, prompts, refs  # refs (K, L, d) float32
        self.layers, self.lam, self.batch = layers, float(lam), batch

    def _states(self, idx, device, trim: bool = True):
        """(b, L, d) float32 hidden states at the last token of prompts ``idx``, the batch cut to its longest
        prompt when ``trim`` (the references keep the full padded width they were first computed at)."""
        import torch

        from asft.methods.anchors import decoder_hidden

        mask = self.prompts["attention_mask"][idx]
        T = int(mask.sum(1).max()) if trim else mask.shape[1]
        hs = decoder_hidden(self.model, self.prompts["input_ids"][idx, :T].to(device), mask[:, :T].to(device),
                            self.layers)
        last = self.prompts["last"][idx].to(device)
        rows = torch.arange(len(last), device=device)
        return torch.stack([x[rows, last] for x in hs], 1).float()

    def __call__(self, step: int):
        import torch

        from asft.methods.anchors import rotation

        idx = torch.tensor(rotation(step, self.batch, len(self.refs)))
        h = self._states(idx, self.refs.device)          # (b, L, d)
        return self.lam * (h - self.refs[idx.to(self.refs.device)]).pow(2).sum(-1).mean()

    def references(self):
        """(K, L, d) hidden states of the aligned model (adapter disabled) at every prompt's last token."""
        import torch

        from asft.methods.anchors import aligned_eval

        device = next(self.model.parameters()).device
        K = len(self.prompts["last"])
        with torch.no_grad(), aligned_eval(self.model):
            return torch.cat([self._states(torch.arange(s, min(s + 16, K)), device, trim=False)
                              for s in range(0, K, 16)])


class HiddenAnchor(Method):
    name = "hidden-anchor"
    label = "hidden-anchor"
    order = 83
    help = "task loss + lam * mean ||h_L - h_L(aligned)||^2 at the last token of --safety-data prompts (SBR)"
    marker = "P"
    takes_lambda = True
    needs_safety_data = True
    default_safety_n = 32
    shardable = False  # runs the unwrapped model on its own prompts
    fsdp = "it runs the model on its own prompts inside the step, not made under sharding yet"

    def validate(self, cfg) -> None:
        super().validate(cfg)
        parse_layers(cfg.anchor_layers)

    def build_hook(self, cfg, model, tokenizer, args, batches_per_epoch: int):
        from asft.methods.anchors import PenaltyHook, draw_safety, encode_prompts

        records = draw_safety(cfg, self.default_safety_n)
        prompts = encode_prompts(records, tokenizer, cfg.template, cfg.max_length)
        pen = HiddenAnchorPenalty(model, prompts, None, parse_layers(cfg.anchor_layers), cfg.lam, cfg.anchor_batch)
        pen.refs = pen.references()
        return PenaltyHook(pen, {"safety_records": len(records)})

    def describe_penalty(self, cfg: dict) -> str:
        return (f"λ = {cfg.get('lam')}, hidden states {cfg.get('anchor_layers')} on the prompts of "
                f"{cfg.get('safety_data')}")


HIDDEN_ANCHOR = register_method(HiddenAnchor())
