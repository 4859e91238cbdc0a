"""Batched generation engine: same answers as one prompt at a time, order, EOS, left padding."""

import torch

from _eval_tiny import byte_tokenizer, tiny_llama
from asft.data import encode_prompt, format_prompt
from asft.models.generate import eos_ids, generate, left_pad, position_ids_from_mask

torch.set_num_threads(1)

PROMPTS = ["a", "hello there, how are you today?", "xyz", "the quick brown fox jumps", "42 + 1 =", "ok ok"]


def _reference(model, tok, prompt, n, eos=2):
    """The reference scripts' loop: one prompt, model.generate, decode the new tokens."""
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         do_sample=False, eos_token_id=eos, pad_token_id=3)
    new = out[0, ids.shape[1]:].tolist()
    if eos in new:
        new = new[:new.index(eos)]
    return tok.decode(new, skip_special_tokens=True).strip()


def test_batched_equals_one_at_a_time_and_keeps_order():
    model, tok = tiny_llama(), byte_tokenizer()
    singles = [_reference(model, tok, p, 12) for p in PROMPTS]
    assert len(set(singles)) == len(PROMPTS)  # distinct answers, so a mix-up of order would show
    batched = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=4, progress=False)
    assert batched == singles
    one = generate(model, tok, PROMPTS, max_new_tokens=12, batch_size=1, progress=False)
    assert one == singles


def test_left_padding_reaches_the_model():
    model, tok = tiny_llama(), byte_tokenizer()
    seen = []

    def hook(module, args, kwargs):
        if kwargs.get("attention_mask") is not None and not seen:
            seen.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))

    h = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generate(model, tok, ["a", "a much longer prompt"], max_new_tokens=2, batch_size=2, progress=False)
    finally:
        h.remove()
    ids, mask = seen[0]
    short = len(tok("a")["input_ids"])
    assert mask[:, -1].tolist() == [1, 1]  # every row's last position is a real token
    assert mask[1, : ids.shape[1] - short].eq(0).all() and mask[1, -short:].eq(1).all()
    assert ids[1, 0].item() == 3  # the pad id fills the left


def test_left_pad_and_positions():
    ids, mask = left_pad([[5, 6, 7], [9]], pad=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_each_sequence_stops_at_its_own_eos():
    model, tok = tiny_llama(), byte_tokenizer()
    # Make the 3rd token the first prompt generates the stop token: that answer ends after two
    # tokens while the others in the same batch run on (cut only where they produce that token).
    free = [tok(p)["input_ids"] for p in PROMPTS[:3]]
    runs = []
    for ids in free:
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                             eos_token_id=2, pad_token_id=3)
        runs.append(out[0, len(ids):].tolist())
    stop = runs[0][2]
    assert stop not in runs[0][:2]
    got = generate(model, tok, PROMPTS[:3], max_new_tokens=10, batch_size=3, eos_token_id=stop, progress=False)
    for text, run in zip(got, runs):
        cut = run[:run.index(stop)] if stop in run else run
        assert text == tok.decode(cut, skip_special_tokens=True).strip()
    # the batch did not stop with the first sequence: another one ran past its two tokens
    assert any((run.index(stop) if stop in run else len(run)) > 2 for run in runs[1:])


def test_chat_prompts_are_tokenized_like_training():
    tok = byte_tokenizer()
    prompt = format_prompt({"instruction": "hi"}, "chat", tok)
    # the chat template carries its own BOS: generation must not add a second one
    assert encode_prompt(tok, prompt, "chat") == tok(prompt, add_special_tokens=False)["input_ids"]
    assert encode_prompt(tok, prompt, "chat")[:2] != [1, 1]
    model = tiny_llama()
    seen = []
    h = model.register_forward_pre_hook(lambda m, a, k: seen.append(k["input_ids"][0].tolist()) if not seen else None,
                                        with_kwargs=True)
    try:
        generate(model, tok, [prompt], max_new_tokens=1, batch_size=1, add_special_tokens=False, progress=False)
    finally:
        h.remove()
    assert seen[0] == encode_prompt(tok, prompt, "chat")


def test_eos_ids_merges_generation_config_and_tokenizer():
    model, tok = tiny_llama(), byte_tokenizer()
    model.generation_config.eos_token_id = [2, 7]
    assert eos_ids(model, tok) == [2, 7]


def test_on_batch_reports_every_prompt_once_with_original_indices():
    model, tok = tiny_llama(), byte_tokenizer()
    seen = {}
    out = generate(model, tok, PROMPTS, max_new_tokens=3, batch_size=4, progress=False,
                   on_batch=lambda idx, texts: seen.update(zip(idx, texts)))
    assert sorted(seen) == list(range(len(PROMPTS)))
    assert [seen[i] for i in range(len(PROMPTS))] == out


MANY = [("x" * (1 + (7 * k) % 23)) + f" {k} " + "the cat sat" * (k % 3) for k in range(23)]


def test_rows_leave_and_join_the_batch_and_answers_equal_one_at_a_time():
    """23 prompts of mixed length through batches of 4: finished rows leave the cache, waiting
    prompts are prefilled and join it (left-padded to the cache's length); every answer is the one
    the reference loop gives for that prompt alone. The EOS is a frequent byte, so lengths vary."""
    from asft.models.generate import generate_reference

    model, tok = tiny_llama(seed=3), byte_tokenizer()
    eos = tok("e")["input_ids"][-1]
    singles = generate_reference(model, tok, MANY, max_new_tokens=20, batch_size=1, eos_token_id=eos)
    lengths = {len(s) for s in singles}
    assert len(lengths) > 3  # rows finish at different steps: removal and refill both happen
    got = generate(model, tok, MANY, max_new_tokens=20, batch_size=4, eos_token_id=eos, progress=False)
    assert got == singles
    assert generate(model, tok, MANY, max_new_tokens=20, batch_size=64, eos_token_id=eos, progress=False) == singles
    assert generate_reference(model, tok, MANY, max_new_tokens=20, batch_size=8, eos_token_id=eos) == singles


def test_stop_callback_ends_a_response_early_and_only_that_one():
    from asft.models.generate import generate_reference

    model, tok = tiny_llama(seed=3), byte_tokenizer()
    full = generate_reference(model, tok, MANY[:6], max_new_tokens=16, batch_size=1)
    seen, first3 = {}, []

    def stop(i, ids):  # prompt 2 stops after 3 tokens; the others run to their end
        seen[i] = seen.get(i, 0) + 1
        if i == 2 and len(ids) == 3:
            first3.extend(ids)
            return True
        return False

    got = generate(model, tok, MANY[:6], max_new_tokens=16, batch_size=3, progress=False, stop=stop)
    assert got[2] == tok.decode(first3, skip_special_tokens=True).strip() and full[2].startswith(got[2])
    assert len(got[2]) < len(full[2])
    assert [g for k, g in enumerate(got) if k != 2] == [f for k, f in enumerate(full) if k != 2]
    assert set(seen) == set(range(6))


def test_sliding_window_model_decodes_without_merging():
    """Gemma 3 mixes sliding-window and full-attention layers: rows still leave the batch, no
    prompts join a running one (its cache cannot be aligned), answers equal one at a time."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from asft.models.generate import _mergeable, generate_reference

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=128,
                           pad_token_id=3, bos_token_id=1, eos_token_id=2)
    model, tok = Gemma3ForCausalLM(cfg).eval(), byte_tokenizer()
    from transformers import DynamicCache

    assert not _mergeable(DynamicCache(config=cfg))
    eos = tok("e")["input_ids"][-1]
    singles = generate_reference(model, tok, MANY[:9], max_new_tokens=14, batch_size=1, eos_token_id=eos)
    assert generate(model, tok, MANY[:9], max_new_tokens=14, batch_size=4, eos_token_id=eos, progress=False) == singles
