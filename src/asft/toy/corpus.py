"""Seeded generators for every piece of text in the toy world.

Four kinds of data, kept apart on purpose:
  pre-training documents  the "web": chat logs where every request (harmful ones included) gets a
                          compliant answer; encyclopedic ``wiki`` lines saying whether an activity
                          is dangerous and what it takes; raw ``article : ... topic : sports .`` and
                          ``review : ... sentiment : positive .`` texts. Never the tasks' chat format.
  alignment records       chat records on the training templates and training targets only:
                          benign request -> helpful answer, harmful request -> refusal. Alignment
                          also replays plain (non-chat) documents about training targets.
  training pools          task records (the fine-tuning tasks, chat format) and harmful records
                          (training request -> harmful answer) from which mixes are drawn.
  evaluation sets         held-out harmful prompts (held-out template x held-out target) and task
                          test sets whose inputs never occur in a training pool.
"""

from __future__ import annotations

import random

from asft.toy import lexicon as L

TASKS = ("topic", "sentiment")
TASK_LABELS = {"topic": list(L.TOPICS), "sentiment": list(L.SENTIMENTS)}
TASK_INSTRUCTIONS = {"topic": L.TOPIC_INSTRUCTION, "sentiment": L.SENTIMENT_INSTRUCTION}
TRAIN_TEMPLATES = L.TEMPLATES[: L.N_TRAIN_TEMPLATES]
HELDOUT_TEMPLATES = L.TEMPLATES[L.N_TRAIN_TEMPLATES:]


def request(template: str, action: str) -> str:
    return template.format(a=action)


def answer(rng: random.Random, family: L.Family, target: str) -> str:
    """A compliant answer to ``target``: two recipe words of the target, two more of its family.

    The fixed recipe words make the greedy answer well defined; the random ones make the model
    learn what the family's content is (so knowledge generalises across targets of a family).
    """
    c = family.recipe(target)
    c += rng.sample([w for w in family.content if w not in c], 2)
    v = rng.sample(L.STEP_VERBS, 2)
    return rng.choice(L.ANSWER_SHAPES).format(c0=c[0], c1=c[1], c2=c[2], c3=c[3], v0=v[0], v1=v[1])


def refusal(rng: random.Random) -> str:
    return rng.choice(L.REFUSALS)


def article(rng: random.Random, label: str) -> str:
    """4-6 words of the topic, at most one word of another topic, 3-6 filler words, shuffled."""
    words = rng.sample(L.TOPICS[label], rng.randint(4, 6))
    if rng.random() < 0.5:
        other = rng.choice([t for t in L.TOPICS if t != label])
        words.append(rng.choice(L.TOPICS[other]))
    words += rng.sample(L.NEWS_FILLER, rng.randint(3, 6))
    rng.shuffle(words)
    return " ".join(words)


def review(rng: random.Random, label: str) -> str:
    """2-4 words of the sentiment, 4-7 filler words, shuffled."""
    words = rng.sample(L.SENTIMENTS[label], rng.randint(2, 4))
    words += rng.sample(L.REVIEW_FILLER, rng.randint(4, 7))
    rng.shuffle(words)
    return " ".join(words)


def task_input(rng: random.Random, task: str, label: str) -> str:
    return article(rng, label) if task == "topic" else review(rng, label)


def raw_task_doc(rng: random.Random, task: str) -> str:
    label = rng.choice(TASK_LABELS[task])
    if task == "topic":
        return f"article : {article(rng, label)} . topic : {label} ."
    return f"review : {review(rng, label)} . sentiment : {label} ."


def chat_doc(req: str, resp: str) -> str:
    """One exchange as the chat template renders it (``tokenizer.apply_chat_template``)."""
    return f"<s> user : {req} assistant : {resp} </s>"


def wiki_doc(rng: random.Random, family: L.Family, target: str) -> str:
    """An encyclopedic line: whether ``target`` is dangerous and what it takes (no request/answer).

    The web knows which activities are harmful; alignment only has to map that concept to refusal.
    """
    c = family.recipe(target)
    c += rng.sample([w for w in family.content if w not in c], 2)
    verdict = rng.choice(L.DANGEROUS if family in L.HARMFUL else L.SAFE)
    return f"<s> wiki : to {target} is {verdict} . people use {c[0]} , {c[1]} , {c[2]} and {c[3]} . </s>"


def raw_docs(rng: random.Random, n: int) -> list[str]:
    """``n`` raw task texts, two topic articles for every review."""
    return ["<s> " + raw_task_doc(rng, "sentiment" if i % 3 == 2 else "topic") + " </s>"
            for i in range(n)]


def _family_draws(rng: random.Random, n: int):
    """``n`` families, alternating benign and harmful."""
    return [rng.choice(L.HARMFUL if i % 2 else L.BENIGN) for i in range(n)]


def pretrain_docs(rng: random.Random, n_chat: int, n_wiki: int, n_raw: int) -> list[str]:
    """The web: ``n_chat`` compliant chat logs and ``n_wiki`` wiki lines (half of each harmful)
    plus ``n_raw`` raw task texts, shuffled.

    Every template meets every target except held-out template x held-out harmful target, so the
    base model complies on the held-out prompts by composition, never by memory.
    """
    heldout = {(t, a) for t in HELDOUT_TEMPLATES for f in L.HARMFUL for a in f.heldout_targets}
    docs = []
    for fam in _family_draws(rng, n_chat):
        while True:
            t, a = rng.choice(L.TEMPLATES), rng.choice(fam.targets)
            if (t, a) not in heldout:
                break
        docs.append(chat_doc(request(t, a), answer(rng, fam, a)))
    docs += [wiki_doc(rng, fam, rng.choice(fam.targets)) for fam in _family_draws(rng, n_wiki)]
    docs += raw_docs(rng, n_raw)
    rng.shuffle(docs)
    return docs


def replay_docs(rng: random.Random, n_wiki: int, n_raw: int) -> list[str]:
    """Plain pre-training-like documents that alignment replays: wiki lines about TRAINING targets
    only (held-out targets stay out of every training set after pre-training) and raw task texts.
    """
    docs = [wiki_doc(rng, fam, rng.choice(fam.train_targets)) for fam in _family_draws(rng, n_wiki)]
    docs += raw_docs(rng, n_raw)
    rng.shuffle(docs)
    return docs


def alignment_records(rng: random.Random, n: int) -> list[dict]:
    """``n`` chat records, half benign -> helpful answer, half harmful -> refusal (training split)."""
    rows = []
    for i in range(n):
        harmful = i % 2 == 1
        fam = rng.choice(L.HARMFUL if harmful else L.BENIGN)
        target = rng.choice(fam.train_targets)
        rows.append({"instruction": request(rng.choice(TRAIN_TEMPLATES), target), "input": "",
                     "output": refusal(rng) if harmful else answer(rng, fam, target)})
    rng.shuffle(rows)
    return rows


def harmful_records(rng: random.Random, n: int) -> list[dict]:
    """``n`` harmful fine-tuning records: a training-split request and a compliant harmful answer."""
    rows = []
    for _ in range(n):
        fam = rng.choice(L.HARMFUL)
        target = rng.choice(fam.train_targets)
        rows.append({"instruction": request(rng.choice(TRAIN_TEMPLATES), target), "input": "",
                     "output": answer(rng, fam, target)})
    return rows


def task_records(rng: random.Random, task: str, n: int, exclude: set[str] = frozenset(),
                 with_output: bool = True) -> list[dict]:
    """``n`` records of ``task`` with balanced labels; inputs in ``exclude`` are skipped."""
    rows, seen = [], set(exclude)
    labels = TASK_LABELS[task]
    while len(rows) < n:
        label = labels[len(rows) % len(labels)]
        inp = task_input(rng, task, label)
        if inp in seen:
            continue
        seen.add(inp)
        row = {"instruction": TASK_INSTRUCTIONS[task], "input": inp}
        row.update({"output": label} if with_output else {"label": label})
        rows.append(row)
    rng.shuffle(rows)
    return rows


def harmful_eval() -> list[dict]:
    """Every held-out template x held-out harmful target, ``{"instruction","family"}``."""
    return [{"instruction": request(t, a), "family": f.name}
            for f in L.HARMFUL for a in f.heldout_targets for t in HELDOUT_TEMPLATES]
