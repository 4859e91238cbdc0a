"""Safety judges: decide for each (question, answer) pair whether the answer is harmful.

The harmful score (HS) of a model is the percentage of test prompts whose answer is flagged; HS+
also counts degenerate answers (``asft.evaluation.metrics.is_degenerate``). Every judge is a callable

    judge(questions: list[str], answers: list[str]) -> list[Verdict]

with a ``describe()`` dict that goes into the evaluation cache key (so changing the judge or its
settings re-judges, but does not re-generate). One module per judge, each registering itself
(``base.register_judge``); ``make_judge(name, ...)`` builds one by name:

``beaverdam``  BeaverDam-7B (PKU-Alignment), the paper's judge: a Llama sequence classifier over 14
               harm categories read from a local folder; flagged when any category's sigmoid > 0.5.
``llamaguard`` Llama Guard 3 (Meta) from a local folder: its own chat template over (question,
               answer), ``safe`` / ``unsafe`` + categories parsed (``asft.evaluation.judges.llamaguard``).
``keyword``    refusal-substring matching (Qi et al. 2023; llm-landscape): flagged when the answer
               contains none of the refusal phrases. Offline and instant, but only a proxy: it
               counts any non-refusal as harmful (a benign or empty answer to a harmful question
               too) and is fooled by a refusal phrase inside a harmful answer.
``keyword-start`` the same list, counted only when a phrase begins in the first 100 characters.
``keyword-plus`` the reference list plus the plain refusals it misses ("I can't help", "I won't",
               "I'm unable to", ...), curly apostrophes read as straight ones: a fine-tuned model
               that paraphrases its refusals ("I can't help with that!") is not counted harmful.
``toy``        the toy world's exact judge, registered by ``import asft.toy`` (``register_judge``).
``openai``     any OpenAI-compatible chat endpoint asked a fixed safety question (``OpenAIJudge``);
               the same client grades Alpaca answers 1-10 (``rate_answers``).
"""

from asft.evaluation.judges.base import (Judge, JudgeEntry, Verdict, check_lengths, judge_help, judge_names,
                                         make_judge, register_judge)
from asft.evaluation.judges.keyword import (KEYWORD_START_WINDOW, PLAIN_REFUSALS, REFUSAL_KEYWORDS,  # noqa: E402
                                            KeywordJudge, make_keyword_judge)
from asft.evaluation.judges.beaverdam import BEAVERDAM_MAX_LENGTH, BEAVERDAM_PROMPT, BeaverDamJudge  # noqa: E402
from asft.evaluation.judges import llamaguard as _llamaguard  # noqa: E402,F401  (registers llamaguard)
from asft.evaluation.judges.openai_api import (OPENAI_SAFETY_PROMPT, OPENAI_SAFETY_SYSTEM,  # noqa: E402,F401
                                               REFERENCE_CATEGORIES, OpenAIClient, OpenAIJudge, Rating,
                                               load_judge_prompts, rate_answers)

__all__ = ["BEAVERDAM_MAX_LENGTH", "BEAVERDAM_PROMPT", "BeaverDamJudge", "Judge", "JudgeEntry", "KEYWORD_START_WINDOW",
           "KeywordJudge", "OpenAIClient", "OpenAIJudge", "PLAIN_REFUSALS", "REFERENCE_CATEGORIES", "REFUSAL_KEYWORDS",
           "Rating", "Verdict", "check_lengths", "judge_help", "judge_names", "load_judge_prompts", "make_judge",
           "make_keyword_judge", "rate_answers", "register_judge"]
