"""What a safety judge is (``Judge``: a callable giving one ``Verdict`` per answer) and the registry
of judges by name (``register_judge``, ``make_judge``, ``judge_names``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from asft.errors import AsftError


@dataclass
class Verdict:
    """One judged answer. ``categories``: per-category probability (BeaverDam) or None."""

    flagged: bool
    categories: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"flagged": self.flagged}
        if self.categories is not None:
            d["categories"] = self.categories
        if self.extra:
            d["extra"] = self.extra
        return d


class Judge(Protocol):
    name: str

    def __call__(self, questions: Sequence[str], answers: Sequence[str]) -> list[Verdict]: ...

    def describe(self) -> dict: ...


def check_lengths(questions: Sequence[str], answers: Sequence[str]) -> None:
    if len(questions) != len(answers):
        raise AsftError(f"judge got {len(questions)} questions but {len(answers)} answers")


@dataclass(frozen=True)
class JudgeEntry:
    name: str
    factory: Callable[..., "Judge"]
    settings: bool   # the factory takes the judge settings (judge_model, threshold, ...) as keywords
    offline: bool    # instant and model-free: stored answers can be judged again (asft report --rejudge)
    help: str


_REGISTRY: dict[str, JudgeEntry] = {}


def register_judge(name: str, factory: Callable[..., "Judge"], *, settings: bool = False, offline: bool = False,
                   help: str = "") -> None:
    """Add a judge made by ``factory()`` (``asft.toy`` adds ``toy``), or by ``factory(**settings)`` when
    ``settings``: judge_model, keywords_file, threshold, batch_size, client, device, max_length (each
    factory takes what it needs and ignores the rest). Registering a name again replaces it."""
    _REGISTRY[name] = JudgeEntry(name, factory, settings, offline, help)


def judge_names(offline: bool | None = None) -> list[str]:
    """Registered judge names (``offline=True``: those that can judge stored answers again)."""
    return [n for n, e in _REGISTRY.items() if offline is None or e.offline == offline]


def judge_help() -> str:
    """One line per judge, for --help texts."""
    return "; ".join(f"{n}: {e.help}" if e.help else n for n, e in _REGISTRY.items())


def make_judge(name: str, judge_model=None, **settings) -> "Judge":
    """Build a registered judge by name. ``judge_model``: its model folder (BeaverDam, Llama Guard) or
    endpoint model; ``settings``: keywords_file, threshold, batch_size, client, device, max_length."""
    entry = _REGISTRY.get(name)
    if entry is None:
        hint = " (the toy judge: `import asft.toy` first)" if name == "toy" else ""
        raise AsftError(f"unknown judge {name!r} (choose from {', '.join(_REGISTRY)}){hint}")
    return entry.factory(judge_model=judge_model, **settings) if entry.settings else entry.factory()
