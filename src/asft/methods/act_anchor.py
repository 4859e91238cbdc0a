"""``act-anchor``: the AsFT penalty with its anchor taken from safety data instead of V.

``lam * sum_modules ||B A X^T||_F^2 / n = lam * sum tr(B^T B . A S A^T)``, X (n, d_in) the module's
inputs on the safety demonstrations (aligned model, non-padding positions), S = X^T X / n normalised
to trace d_in: an update is penalised by how much it changes the module's output *on the inputs
the refusals run through*, and S = I is exactly the l2 control. Cost per step O(r d_in^2), no extra
forward; S is computed once (``asft.methods.anchors``) and cached beside the run.
"""

from asft.methods.base import Method, register_method


class ActAnchor(Method):
    name = "act-anchor"
    label = "act-anchor"
    order = 80
    help = "task loss + lam * sum ||B A X^T||^2 / n, X the module's inputs on --safety-data"
    marker = "s"
    takes_lambda = True
    needs_safety_data = True
    default_safety_n = 100  # SafeInstr's: the data-equal comparison uses the same demonstrations
    shardable = False  # the penalty reads whole LoRA weights
    # --fsdp: the statistics come from a forward pass of the sharded model (the same on every rank) and
    # the penalty reads the sharded LoRA weights whole (tests/test_distributed.py)
    fisher = False     # fisher-anchor: also the output-gradient factor S_g

    def build_hook(self, cfg, model, tokenizer, args, batches_per_epoch: int):
        from asft.methods.anchors import DataAnchorPenalty, PenaltyHook, draw_safety, safety_statistics
        from asft.methods.regularizer import lora_pairs

        records = draw_safety(cfg, self.default_safety_n)
        stats = safety_statistics(model, tokenizer, cfg, records, outputs=self.fisher)
        penalty = DataAnchorPenalty(lora_pairs(model), stats, lam=cfg.lam, scale_by_lora=cfg.scale_by_lora)
        return PenaltyHook(penalty, {"safety_records": len(records)})

    def describe_penalty(self, cfg: dict) -> str:
        return f"λ = {cfg.get('lam')}, S from the inputs on {cfg.get('safety_data')}"


ACT_ANCHOR = register_method(ActAnchor())
