"""``asft``: task loss + ``lam * sum ||(I - C) B A||_F^2`` with C from the alignment direction
``V = W_aligned - W_base`` (AsFT, arXiv 2506.08473). Forms of C: ``reference`` (V V^T / ||V||_F, the
authors' public code), ``projector`` (U_k U_k^T, the top-k left singular vectors of V) and ``scaled``
(V V^T / sigma_max(V)^2, the reference C with its largest eigenvalue set to 1: the ablation of the
scale); the engine is ``asft.methods.regularizer``."""

from asft.methods.base import Method, register_method


class AsFT(Method):
    name = "asft"
    label = "AsFT"
    paper_name = "AsFT"  # the paper's AsFT rows: reference C at lambda 1
    order = 70
    help = "task loss + lam * sum ||(I - C) B A||_F^2, C from the anchor (--form)"
    takes_lambda = True
    forms = ("reference", "projector", "scaled")
    needs_anchor = True
    shardable = False  # under accelerate's FSDP / ZeRO-3; asft train --fsdp reads whole weights

    def penalty_form(self, cfg) -> str:
        return cfg.form

    def build_penalty(self, model, cfg, anchor):
        from asft.methods.regularizer import AsftPenalty

        return AsftPenalty.from_model(model, anchor, form=cfg.form, lam=cfg.lam, k=cfg.proj_rank,
                                      energy=cfg.proj_energy, scale_by_lora=cfg.scale_by_lora)

    def family(self, row: dict) -> str:
        form = row.get("form") or self.forms[0]
        return {"reference": "asft (reference C)", "scaled": "asft (scaled C)"}.get(form, f"asft ({form})")

    def describe_penalty(self, cfg: dict) -> str:
        return f"λ = {cfg.get('lam')}, C: {cfg.get('form')}"


ASFT = register_method(AsFT())
