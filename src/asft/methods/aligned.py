"""``aligned``: the aligned model itself, evaluated as it is (no fine-tuning), the top row of every table."""

from asft.methods.base import Method, register_method


class Aligned(Method):
    name = "aligned"
    label = "aligned (no fine-tuning)"
    order = 0
    help = "the aligned model itself (evaluated, not trained)"
    marker = "*"
    fine_tunes = False

    def group(self, lam: float = 0.0, form: str | None = None) -> str:
        return self.name


ALIGNED = register_method(Aligned())
