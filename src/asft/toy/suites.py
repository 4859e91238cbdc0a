"""The toy world's evaluation suites and judge, registered with ``asft.evaluation.suites`` and
``asft.evaluation.judges`` when ``asft.toy`` is imported (those modules never import the toy world).
Free of torch: the command line imports it to list the toy suites and judge.

``toy-harmful``  <data_dir>/harmful.json, at most 64 new tokens, HS with the ``toy`` judge
``toy-<task>``   <data_dir>/<task>.json, at most 32 new tokens, FA by ``judge.task_correct``
"""

from __future__ import annotations

from asft.evaluation.suites import SuiteSpec, register_suites
from asft.evaluation.judges import register_judge
from asft.toy.judge import ToyJudge, task_correct

HARMFUL_MAX_NEW, TASK_MAX_NEW = 64, 32


def resolve(name: str) -> SuiteSpec | None:
    if name == "toy-harmful":
        return SuiteSpec(name, "harmful", "harmful.json", HARMFUL_MAX_NEW, judge="toy")  # the toy language
    if name.startswith("toy-") and len(name) > 4:
        return SuiteSpec(name, "task", f"{name[4:]}.json", TASK_MAX_NEW, correct=task_correct)
    return None


register_suites(resolve, names=("toy-harmful", "toy-<task>"))
register_judge("toy", ToyJudge, offline=True, help="the toy world's exact judge")
