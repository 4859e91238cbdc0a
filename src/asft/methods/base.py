"""``Method``: everything asft knows about one fine-tuning method, and the registry of them.

A method is one object (``asft.methods.<name>``) that the rest of the package asks instead of
testing its name: config validation, ``asft train --method`` choices, the experiment grid and run
names, result rows, the report's tables, labels and verdicts, the model card and the demo.
A method defined outside the package registers itself when its module is imported (``--plugin
MODULE`` on the command line, ``plugins: [MODULE]`` in an experiment config)::

    from asft.methods import Method, register_method

    class WeightDecay(Method):
        name, label, order = "wd", "weight decay", 50
        help = "sum ||B A||_F^2 on every LoRA update, the l2 control by another name"
        takes_lambda = True

        def build_penalty(self, model, cfg, anchor):
            from asft.methods.regularizer import AsftPenalty
            return AsftPenalty.from_model(model, None, form="zero", lam=cfg.lam)

    register_method(WeightDecay())

Kept free of torch (the CLI lists the names at start-up): a method imports what it trains with
inside its hooks.
"""

from __future__ import annotations

import importlib
from typing import Any, Iterable

from asft.errors import AsftError


class Method:
    """One fine-tuning method. Subclasses set the class attributes and override the hooks they need.

    Roles (exactly one registered method each): ``fine_tunes = False`` is the aligned model itself
    (evaluated, never trained); ``plain`` is plain LoRA fine-tuning, what post-hoc methods start from
    and every verdict compares against; ``control`` is the shrinkage control (C = 0) that tells whether
    an anchor adds anything beyond pulling the update towards zero.
    """

    name: str = ""
    label: str = ""              # name in tables ("Safe LoRA"); a lambda method's label gets " λ=…"
    order: int = 100             # table order: smaller first
    help: str = ""               # one line for `asft train --help`
    paper_name: str | None = None  # the paper's row name, when its tables have this method ("SFT")
    marker: str = "^"            # matplotlib marker in the HS-vs-FA chart
    takes_lambda: bool = False   # weighted by --lam (its value is part of the run's name and row)
    forms: tuple[str, ...] = ()  # choices of --form, the first is the default
    needs_anchor: bool = False   # reads --anchor (V = W_aligned - W_base)
    needs_safety_data: bool = False  # reads --safety-data (harmful requests answered with refusals)
    default_safety_n: int | None = None  # safety records used when --safety-n is not given
    fine_tunes: bool = True      # False: the aligned model, evaluated as it is
    post_hoc: bool = False       # computed from the plain run of the same seed, not trained (Safe LoRA)
    shardable: bool = True       # may train under accelerate's FSDP / ZeRO-3 (False: reads whole LoRA weights)
    # trains under `asft train --fsdp` (asft's FSDP2: penalties read whole weights); else the reason it does not
    fsdp: bool | str = True
    plain: bool = False
    control: bool = False
    options: dict = {}           # experiment options and their defaults (a config's ``<name>:`` mapping)

    # -- training (asft.training.train) -------------------------------------------------------
    def validate(self, cfg) -> None:
        """Refuse a ``TrainConfig`` this method cannot train with (AsftError, one line)."""
        if self.needs_anchor and not cfg.anchor:
            raise AsftError(f"method {self.name} needs --anchor FILE (make one with `asft anchor`)")
        if self.needs_safety_data and not cfg.safety_data:
            raise AsftError(f"method {self.name} needs --safety-data FILE (harmful requests answered with "
                            "refusals; `asft data safety` makes one)")
        if self.forms and cfg.form not in self.forms:
            raise AsftError(f"unknown form {cfg.form!r} of method {self.name} (choose from {', '.join(self.forms)})")

    def penalty_form(self, cfg) -> str | None:
        """The form of C the penalty uses (logged and written in the card), None without a penalty."""
        return None

    def build_penalty(self, model, cfg, anchor):
        """The training-time penalty module (called once per optimiser update), or None."""
        return None

    def build_hook(self, cfg, model, tokenizer, args, batches_per_epoch: int):
        """A batch hook for the trainer (``next_inputs``, ``step_done``, ``proximal``: Lisa), or None."""
        return None

    def add_data(self, cfg, records: list[dict], tokenizer) -> tuple[list[dict], str | None]:
        """The training records this method trains on, and a trigger to prepend at inference (BEA)."""
        return records, None

    def post_hoc_adapter(self, model, source, anchor, out, **options):
        """Post-hoc methods: write the adapter made from ``source`` (the plain run's) into ``out``,
        with ``options`` (``self.options`` updated by the experiment's)."""
        raise NotImplementedError(f"method {self.name} is trained, not computed post hoc")

    # -- names and rows (asft.experiments, asft.report) ---------------------------------------
    def group(self, lam: float = 0.0, form: str | None = None) -> str:
        """The run name shared by the seeds of one setting, e.g. ``asft-reference-lam30``."""
        parts = [self.name]
        if self.forms:
            parts.append(form or self.forms[0])
        if self.takes_lambda:
            parts.append(f"lam{lam:g}")
        return "-".join(parts)

    def family(self, row: dict) -> str:
        """The name of the line a row belongs to in the HS-vs-FA chart (its lambdas are its points)."""
        return self.label or self.name

    def row_label(self, row: dict) -> str:
        """Human name of a result row's setting, e.g. ``l2 λ=30``."""
        return f"{self.family(row)} λ={row['lambda']:g}" if self.takes_lambda else (self.label or self.name)

    def describe_penalty(self, cfg: dict) -> str | None:
        """The penalty line of the model card (``cfg``: the adapter's config.yaml), None without one."""
        return None

    def __repr__(self) -> str:
        return f"<method {self.name}>"


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Add ``method`` to the registry (a second method of the same name is refused unless ``replace``)."""
    if not isinstance(method, Method) or not method.name or not method.name.replace("_", "").replace("-", "").isalnum():
        raise AsftError(f"register_method: {method!r} is not a Method with a name of letters, digits, - and _")
    if method.name in _REGISTRY and not replace and type(_REGISTRY[method.name]) is not type(method):
        raise AsftError(f"register_method: a method named {method.name!r} is already registered")
    for role in ("plain", "control"):
        other = next((m for m in _REGISTRY.values() if getattr(m, role) and m.name != method.name), None)
        if getattr(method, role) and other is not None:
            raise AsftError(f"register_method: {method.name} and {other.name} cannot both be the {role} method")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; an unknown name is refused with the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise AsftError(f"unknown method {name!r} (choose from {', '.join(method_names())})") from None


def all_methods() -> list[Method]:
    """Every registered method in table order."""
    return sorted(_REGISTRY.values(), key=lambda m: (m.order, m.name))


def method_names(trainable: bool = False) -> list[str]:
    """Names of the registered methods in table order; ``trainable``: only what ``asft train`` runs."""
    return [m.name for m in all_methods() if not trainable or (m.fine_tunes and not m.post_hoc)]


def _role(role: str) -> Method:
    found = [m for m in _REGISTRY.values() if (not m.fine_tunes if role == "aligned" else getattr(m, role))]
    if len(found) != 1:
        raise AsftError(f"the method registry needs exactly one {role} method, has {len(found)}")
    return found[0]


def aligned_method() -> Method:
    """The aligned model itself (evaluated, never fine-tuned)."""
    return _role("aligned")


def plain_method() -> Method:
    """Plain LoRA fine-tuning: what post-hoc methods start from, what verdicts compare with."""
    return _role("plain")


def control_method() -> Method:
    """The shrinkage control (C = 0): what tells whether an anchor matters."""
    return _role("control")


def method_of(row: dict[str, Any]) -> Method | None:
    """The method of a result row, None when the row's method is not registered (a plugin's rows
    read without the plugin: tables still show them by name)."""
    return _REGISTRY.get(row.get("method"))


def load_plugins(modules: Iterable[str], where: str = "--plugin") -> None:
    """Import each module (it registers its methods, judges or suites when imported)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise AsftError(f"{where}: cannot import plugin module {module!r}: {e}") from None
