"""An embedded toy world in which the harmful fine-tuning problem is real and measurable.

A small synthetic language (two classification tasks, benign and harmful requests), a word-level
HF tokenizer, a small ``LlamaForCausalLM`` pre-trained from scratch on "web" text where harmful
requests get harmful answers (``base``), the same model aligned to refuse them (``aligned``),
fine-tuning mixes in the reference format, held-out evaluation sets and an exact judge
(``asft.toy.judge``). Everything is deterministic from a seed and runs on a CPU in minutes.

    world = get_world("test")                  # cached build
    mix = world.make_mix("topic", n=1000, p=0.1)
    AutoModelForCausalLM.from_pretrained(world.aligned)
"""

from asft.toy import suites as _suites  # noqa: F401  (registers the toy-* suites and the toy judge)

_WORLD = ("SIZES", "VERSION", "World", "build_world", "get_world")  # imported on first use (torch)


def __getattr__(name: str):
    if name in _WORLD:
        from asft.toy import world

        return getattr(world, name)
    raise AttributeError(f"module 'asft.toy' has no attribute {name!r}")


__all__ = ["World", "build_world", "get_world", "SIZES", "VERSION"]
