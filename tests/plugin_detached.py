"""A test plugin: the l2 penalty with its gradient dropped (``whole(p).detach()``), to show that the
--fsdp comparison in tests/test_distributed.py fails when the penalty's gradient does not reach the
sharded LoRA weights."""

from asft.methods import Method, register_method


class DetachedL2(Method):
    name, label, order = "l2-detached", "l2 (gradient dropped)", 66
    help = "lam * sum ||B A||_F^2 computed on detached weights: the value, no gradient"
    takes_lambda = True

    def build_penalty(self, model, cfg, anchor):
        from asft.methods.regularizer import lora_pairs, whole

        pairs = list(lora_pairs(model).values())
        return lambda: cfg.lam * sum((whole(B).detach().float() @ whole(A).detach().float()).pow(2).sum()
                                     for A, B, _ in pairs)


register_method(DetachedL2())
