"""Fine-tuning methods: one module per method, each registering a ``Method`` (``base.py``).

Built in, in table order: ``aligned`` (the aligned model, not trained), ``sft`` (plain LoRA),
``safelora`` (post hoc), ``safeinstr``, ``bea``, ``lisa`` (data-level baselines), ``l2`` (the control,
C = 0), ``asft`` (the anchored penalty, engine in ``regularizer.py``) and the anchors from safety data
(``anchors.py``): ``act-anchor``, ``fisher-anchor``, ``nullspace``, ``hidden-anchor``, ``kl-anchor``. A new method is one module
that subclasses ``Method`` and calls ``register_method``; nothing else in the package names it.
"""

from asft.methods.base import (Method, aligned_method, all_methods, control_method, get_method, load_plugins,
                               method_names, method_of, plain_method, register_method)
from asft.methods import aligned, asft, bea, l2, lisa, safeinstr, safelora, sft  # noqa: F401,E402  (register)
from asft.methods import act_anchor, fisher_anchor, hidden_anchor, kl_anchor, nullspace  # noqa: F401,E402

DEFAULT_METHOD = "asft"  # what `asft train` runs when no --method is given

__all__ = ["DEFAULT_METHOD", "Method", "aligned_method", "all_methods", "control_method", "get_method", "load_plugins",
           "method_names", "method_of", "plain_method", "register_method"]
