"""``fisher-anchor``: a K-FAC safety Fisher, ``lam * sum_modules tr(B^T S_g B . A S A^T)``.

S = X^T X / n as in ``act-anchor`` (the module's inputs on the safety demonstrations) and
S_g = G^T G / n, G the gradients of the demonstrations' refusal loss with respect to the module's
output (aligned model, once), each normalised to the trace of the identity. By the Kronecker
factorisation ``E[(g^T dW x)^2] ~ tr(dW^T S_g dW S)`` the penalty weighs the update dW = B A by how
far it moves the refusal loss, not only by which inputs it touches. S = S_g = I is the l2 control.
"""

from asft.methods.act_anchor import ActAnchor
from asft.methods.base import register_method


class FisherAnchor(ActAnchor):
    name = "fisher-anchor"
    label = "fisher-anchor"
    order = 81
    help = "task loss + lam * sum tr(B^T S_g B A S A^T), K-FAC factors of the refusal loss on --safety-data"
    marker = "D"
    fisher = True
    fsdp = "its output-gradient statistics need a backward pass at start-up, not made under sharding yet"

    def describe_penalty(self, cfg: dict) -> str:
        return f"λ = {cfg.get('lam')}, K-FAC refusal-loss factors from {cfg.get('safety_data')}"


FISHER_ANCHOR = register_method(FisherAnchor())
