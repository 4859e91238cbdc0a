"""``sft``: plain LoRA fine-tuning on the user's data, the harmful fine-tuning baseline every method is
compared with (and what post-hoc methods such as Safe LoRA start from)."""

from asft.methods.base import Method, register_method


class SFT(Method):
    name = "sft"
    label = "SFT"
    paper_name = "SFT"
    order = 10
    help = "plain LoRA fine-tuning (the harmful fine-tuning baseline)"
    marker = "s"
    plain = True


SFT_METHOD = register_method(SFT())
