"""AsFT inside TRL's SFTTrainer and plain Trainer logging (report_to receives the penalty apart)."""

import json

import pytest
import torch

pytest.importorskip("trl", reason="TRL is an optional integration (installed by the test extra)")

from _eval_tiny import byte_tokenizer  # noqa: E402
from _models import make_llama_pair  # noqa: E402

RECORDS = [{"prompt": f"say {w}", "completion": f" {w} {w}!"} for w in
           ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree"]] * 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from asft import build_anchor, load_anchor

    root = tmp_path_factory.mktemp("trl")
    base, aligned = make_llama_pair(root, seed=0, vocab=260)
    byte_tokenizer().save_pretrained(aligned)
    build_anchor(base, aligned, out=root / "anchor.safetensors")
    return aligned, load_anchor(root / "anchor.safetensors"), root


def _train(tiny, out, batch, accum, lam, steps=4, callbacks=(), optim="adamw_torch", lr=1e-3):
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig

    from asft import AsftPenalty
    from asft.integrations.trl import AsftSFTTrainer
    from asft.models.modeling import load_model, load_tokenizer

    aligned, anchor, _ = tiny
    torch.manual_seed(0)
    args = SFTConfig(output_dir=str(out), per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                     max_steps=steps, learning_rate=lr, logging_steps=1, report_to=[], use_cpu=True, seed=0,
                     max_length=64, save_strategy="no", disable_tqdm=True, optim=optim)
    trainer = AsftSFTTrainer(model=load_model(aligned), args=args, train_dataset=Dataset.from_list(RECORDS),
                             processing_class=load_tokenizer(aligned), callbacks=list(callbacks),
                             peft_config=LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                                                    target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
                             penalty_factory=lambda m: AsftPenalty.from_model(m, anchor, lam=lam))
    trainer.train()
    return trainer, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}


def test_trl_sft_trainer_with_the_penalty_logs_it_and_holds_the_update(tiny, tmp_path):
    from transformers import TrainerCallback

    seen = []

    class Capture(TrainerCallback):  # what every report_to integration (TensorBoard, ...) receives
        def on_log(self, args, state, control, logs=None, **kw):
            seen.append(dict(logs or {}))

    trainer, free = _train(tiny, tmp_path / "free", 4, 1, lam=0.0)
    trainer, held = _train(tiny, tmp_path / "held", 4, 1, lam=1e3, callbacks=[Capture()])
    logged = [r for r in seen if "task_loss" in r]
    assert len(logged) == 4 and all("penalty" in r and "mean_token_accuracy" in r for r in logged)  # TRL's own too
    assert logged[-1]["penalty"] > 0 and logged[0]["penalty"] == 0.0  # B = 0 at the first step
    for r in logged:  # the reported loss is task loss + penalty
        assert r["loss"] == pytest.approx(r["task_loss"] + r["penalty"], rel=1e-3, abs=1e-3)

    def update(state):  # ||B A||^2 over modules
        names = sorted(k for k in state if "lora_A" in k)
        return sum(float((state[k.replace("lora_A", "lora_B")] @ state[k]).pow(2).sum()) for k in names)

    assert update(held) < 0.2 * update(free)


def test_trl_gradient_accumulation_counts_the_penalty_once_per_update(tiny, tmp_path):
    """2 x 2 == 4 x 1 through TRL's loss. Plain SGD with a large step: Adam's first update is
    about lr * sign(gradient), which turns float noise in tiny gradients into lr-sized gaps."""
    def diff(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in a)

    _, one = _train(tiny, tmp_path / "ga1", 4, 1, lam=50.0, optim="sgd", lr=0.3)
    _, two = _train(tiny, tmp_path / "ga2", 2, 2, lam=50.0, optim="sgd", lr=0.3)
    _, double = _train(tiny, tmp_path / "ga3", 4, 1, lam=100.0, optim="sgd", lr=0.3)
    assert diff(one, two) < 2e-4
    assert diff(one, double) > 20 * diff(one, two)  # a penalty counted twice would show


def test_asft_trainer_keeps_the_trainers_own_scheduler_unless_lr_gamma(tiny, tmp_path):
    """A drop-in AsftTrainer follows TrainingArguments' lr_scheduler_type (here linear decay)."""
    from transformers import TrainingArguments

    from asft import AsftPenalty, AsftTrainer
    from asft.data import PadCollator, SupervisedDataset
    from asft.models.modeling import load_model, load_tokenizer
    from asft.training.train import TrainConfig, prepare_model

    aligned, anchor, _ = tiny
    tok = load_tokenizer(aligned)
    model = prepare_model(load_model(aligned), TrainConfig(lora_dropout=0.0))
    data = SupervisedDataset([{"instruction": r["prompt"], "output": r["completion"]} for r in RECORDS], tok,
                             "alpaca", 256)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
                             lr_scheduler_type="linear", logging_steps=1, report_to=[], use_cpu=True,
                             save_strategy="no", disable_tqdm=True, remove_unused_columns=False)
    trainer = AsftTrainer(model=model, args=args, train_dataset=data, data_collator=PadCollator(tok.pad_token_id),
                          penalty=AsftPenalty.from_model(model, anchor, lam=1.0))
    trainer.train()
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3, 0.25e-3])
    assert json.dumps(trainer.state.log_history)  # plain numbers
