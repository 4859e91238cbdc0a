"""The toy world's word-level tokenizer: a real ``tokenizers`` WordLevel model wrapped for transformers.

Text is lower-cased, split on whitespace and punctuation, and every known word is one token; decoding
joins tokens with single spaces, so world text (already written that way) round-trips exactly.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[UNK]", "<s>", "</s>"]
PAD, UNK, BOS, EOS = SPECIALS

# "<s> user : {content} assistant : {content} </s>" -- the prompt ends with "assistant :".
CHAT_TEMPLATE = (
    "{{ '<s>' }}"
    "{% for m in messages %}"
    "{{ ' ' + m['role'] + ' : ' + m['content'] | trim }}"
    "{% if m['role'] == 'assistant' %}{{ ' </s>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ ' assistant :' }}{% endif %}"
)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A fast tokenizer whose vocabulary is ``SPECIALS + words`` (ids in that order)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = Tokenizer(WordLevel(vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")])
    # add_special_tokens=True (non-chat templates) prepends <s>; the chat template writes its own.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        clean_up_tokenization_spaces=False, model_max_length=128)
    fast.chat_template = CHAT_TEMPLATE
    return fast
