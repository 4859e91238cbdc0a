"""A fine-tuning method defined outside the package (imported by tests/test_registry.py through
``--plugin plugin_method`` and an experiment's ``plugins:``): ``shrinkb`` penalises only the B factor
of each LoRA update, ``lam * sum ||B||_F^2``. One class and one call: nothing else names it."""

from asft.methods import Method, register_method


class ShrinkB:
    """The training-time penalty: called once per optimiser update, returns a scalar tensor."""

    def __init__(self, model, lam: float):
        self.bs = [p for n, p in model.named_parameters() if "lora_B" in n]
        self.lam = lam

    def __call__(self):
        return self.lam * sum(b.float().pow(2).sum() for b in self.bs)


class ShrinkBMethod(Method):
    name = "shrinkb"
    label = "shrink B"
    order = 65  # between the l2 control (60) and AsFT (70)
    help = "lam * sum ||B||_F^2 (a test plugin)"
    takes_lambda = True

    def build_penalty(self, model, cfg, anchor):
        return ShrinkB(model, cfg.lam)

    def describe_penalty(self, cfg: dict) -> str:
        return f"λ = {cfg.get('lam')} on ||B||_F^2"


register_method(ShrinkBMethod())
