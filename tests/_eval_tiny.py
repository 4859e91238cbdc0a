"""Tiny random models and a byte-level tokenizer for the evaluation tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch

from _models import tiny_llama_config

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]  # ids 0..3
CHAT_TEMPLATE = ("<s>{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")


def byte_tokenizer(chat: bool = True):
    """A byte-level tokenizer without merges: 4 special tokens + 256 byte symbols (vocab 260)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({c: i + len(SPECIALS) for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(**kw):
    """``_models.tiny_llama_config`` sized for the byte tokenizer (its special ids, 1024 positions)."""
    cfg = dict(vocab=len(SPECIALS) + 256, bos_token_id=1, eos_token_id=2, pad_token_id=3,
               max_position_embeddings=1024)
    cfg.update(kw)
    return tiny_llama_config(**cfg)


def tiny_llama(seed: int = 0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config()).eval()


def save_tiny_llama(path: Path, seed: int = 0) -> Path:
    tiny_llama(seed).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def save_tiny_classifier(path: Path, num_labels: int = 14, seed: int = 0) -> Path:
    """A random Llama sequence classifier with ``num_labels`` named labels, saved with a tokenizer."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    labels = {i: f"category_{i}" for i in range(num_labels)}
    cfg = tiny_config(num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()},
                      problem_type="multi_label_classification")
    model = LlamaForSequenceClassification(cfg)
    with torch.no_grad():  # spread the head so the sigmoids land on both sides of 0.5
        model.score.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
