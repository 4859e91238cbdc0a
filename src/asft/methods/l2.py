"""``l2``: the AsFT penalty with C = 0, ``lam * sum ||B A||_F^2``: the control that tells whether the
anchor matters or only the shrinkage of the update does. Every comparison in a report sets a method
beside it."""

from asft.methods.base import Method, register_method


class L2(Method):
    name = "l2"
    label = "l2"
    order = 60
    help = "the AsFT penalty with C = 0, lam * sum ||B A||_F^2 (the control)"
    marker = "o"
    takes_lambda = True
    shardable = False  # under accelerate's FSDP / ZeRO-3; asft train --fsdp reads whole weights
    control = True

    def penalty_form(self, cfg) -> str:
        return "zero"

    def build_penalty(self, model, cfg, anchor):
        from asft.methods.regularizer import AsftPenalty

        return AsftPenalty.from_model(model, None, form="zero", lam=cfg.lam, scale_by_lora=cfg.scale_by_lora)

    def describe_penalty(self, cfg: dict) -> str:
        return f"λ = {cfg.get('lam')}, C = 0 (the l2 control)"


L2_METHOD = register_method(L2())
