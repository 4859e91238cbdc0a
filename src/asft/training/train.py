"""LoRA fine-tuning with a method's training-time term, on Hugging Face ``Trainer`` + PEFT.

The method (``--method``, ``asft.methods``) says what it needs (an anchor, safety data) and
supplies its parts: the training records (``add_data``), a penalty (``build_penalty``: AsFT's
``lam * sum ||(I - C) B A||_F^2``, the l2 control's C = 0) and a batch hook (``build_hook``: Lisa).

Because this is a ``Trainer``, gradient accumulation, bf16, gradient checkpointing, checkpoints,
resume and multi-GPU through ``accelerate launch`` / ``torchrun`` work as usual. The penalty is added
once per optimiser update, whatever the accumulation, and logged apart from the task loss.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from asft.training.config import TrainConfig  # noqa: F401  (also importable as asft.training.train.TrainConfig)
from asft.errors import AsftError
from asft.fileio import append_jsonl, atomic_path, output_lock, write_json
from asft.training.trainer import AsftMixin, _make_trainer_class, keep_label_positions  # noqa: F401


@dataclass
class TrainResult:
    out: Path
    steps: int
    seconds: float
    task_loss: float
    penalty: float
    n_examples: int
    n_truncated: int
    n_dropped: int
    c_max_eig: dict[str, float] | None
    trigger: str | None = None  # bea: the secret prompt to prepend at inference
    lisa_alignment_steps: int | None = None  # lisa: steps spent on alignment batches
    method_info: dict | None = None  # what the method's hook reports (e.g. nullspace: dimensions kept)
    resumed_from: int | None = None  # the checkpoint's step when the run continued an unfinished one
    epochs: float | None = None  # epochs trained (the Trainer's count; --max-steps may stop before --epochs)
    fsdp: dict | None = None  # --fsdp: what was sharded over how many processes

log = logging.getLogger("asft.train")  # under the "asft" logger the CLI prints
FINAL_FILES = ("adapter_model.safetensors", "adapter_config.json", "README.md", "train_summary.json")
# What a run folder's config.yaml may differ in and still be the same run (resumable; the folder may
# have been moved)
NOT_THE_RUN = ("out", "resume", "overwrite", "progress", "logging_steps", "report_to", "fsdp")


def prepare_model(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Wrap a loaded causal LM with LoRA adapters on ``cfg.targets``."""
    from peft import LoraConfig, get_peft_model

    from asft.models.modeling import quiet_peft

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.targets), bias="none", task_type="CAUSAL_LM")
    try:
        with quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as e:
        raise AsftError(f"cannot put LoRA on targets {cfg.targets}: {str(e).splitlines()[0]}") from None


def build_penalty(model: torch.nn.Module, cfg: TrainConfig, anchor=None):
    """The method's penalty module for ``cfg`` on a PEFT model (None when it has none)."""
    from asft.methods import get_method

    penalty = get_method(cfg.method).build_penalty(model, cfg, anchor)
    message = penalty.scale_warning() if hasattr(penalty, "scale_warning") else None
    if message:
        import warnings

        from asft.errors import AsftWarning

        warnings.warn(message, AsftWarning, stacklevel=2)
    return penalty


def train(cfg: TrainConfig, records: list[dict] | None = None) -> TrainResult:
    """Fine-tune ``cfg.model`` on ``cfg.data`` (or ``records``) and save the adapter to ``cfg.out``.

    Writes ``out/adapter_model.safetensors`` + ``adapter_config.json`` (PEFT), ``config.yaml``
    (the effective config), ``train_log.jsonl``, the model card and, last, ``train_summary.json``:
    a run folder is finished exactly when it holds the summary. One writer per folder (a lock; a
    second process gets one line). A rerun of an unfinished run with checkpoints continues from the
    last one (same config) or says why it starts afresh (another config).
    """
    cfg.validate()
    if int(os.environ.get("RANK", "0")) != 0:  # the other processes of a launch: rank 0 holds the lock
        return _train(cfg, records)
    with output_lock(cfg.out, "asft train"):
        return _train(cfg, records)


def _unfinished(cfg: TrainConfig, out: Path, launched: bool = False) -> int | None:
    """Prepare ``out`` for this run; the step of the checkpoint it continues from, or None (afresh).

    ``launched`` (one of several processes): the processes cannot agree yet on continuing an earlier
    run, so only an explicit ``--resume`` / ``--overwrite`` decides; rank 0 alone changes the folder."""
    from transformers.trainer_utils import get_last_checkpoint

    from asft.fileio import read_yaml

    if (out / "train_summary.json").is_file() and not (cfg.overwrite or cfg.resume):
        raise AsftError(f"{out}: already holds a finished run (pass --overwrite to replace it)")
    if not (out / "train_summary.json").is_file() and (out / "adapter_model.safetensors").is_file() \
            and not (out / "train_log.jsonl").is_file() and not cfg.overwrite:
        raise AsftError(f"{out}: already holds an adapter (pass --overwrite to replace it)")
    last = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").is_dir() else None
    step = int(Path(last).name.split("-")[-1]) if last else None
    if cfg.resume:
        if step is None:
            raise AsftError(f"{out / 'checkpoints'}: no checkpoint to resume from (train with --save-steps N "
                            "to keep checkpoints)")
        return step
    if step is not None and not cfg.overwrite and launched:
        raise AsftError(f"{out}: holds the checkpoints of an unfinished run: pass --resume to continue it or "
                        "--overwrite to start afresh")
    if step is not None and not cfg.overwrite and (out / "config.yaml").is_file():
        saved, now = _absolute(read_yaml(out / "config.yaml")), _absolute(cfg.to_dict())
        differ = sorted(k for k in set(saved) | set(now) if k not in NOT_THE_RUN and saved.get(k) != now.get(k))
        try:  # a method that cannot resume (lisa) refuses --resume in its validate: the same rule here
            dataclasses.replace(cfg, resume=True).validate()
            why = None
        except AsftError as e:
            why = str(e)
        if not differ and why is None:
            log.warning(f"{out}: continuing an unfinished run from {Path(last).name} (--overwrite starts afresh)")
            return step
        log.warning(f"{out}: starting afresh: " + (why if why else "the unfinished run there had another config "
                    f"({', '.join(f'{k}: {saved.get(k)!r} -> {now.get(k)!r}' for k in differ[:3])}"
                    f"{', ...' if len(differ) > 3 else ''})"))
    if launched and int(os.environ.get("RANK", "0")) != 0:
        return None
    # a fresh run: nothing of an earlier one may be mistaken for this one's
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in (*FINAL_FILES, "train_log.jsonl"):
        (out / name).unlink(missing_ok=True)
    return None


def _trim_log(log_path: Path, step: int) -> None:
    """Drop the log rows after ``step`` (the checkpoint a run continues from): they are redone."""
    from asft.fileio import read_json, write_jsonl

    if log_path.is_file():
        rows = read_json(log_path)
        write_jsonl(log_path, [r for r in rows if not isinstance(r.get("step"), int) or r["step"] <= step])


def _train(cfg: TrainConfig, records: list[dict] | None = None) -> TrainResult:
    from transformers import TrainingArguments, set_seed

    from asft.batches import PadCollator, SupervisedDataset
    from asft.data import check_template, load_records
    from asft.progress import plain_output, trainer_callback
    from asft.models.modeling import check_model_folder, load_model, load_tokenizer, resolve_dtype, save_adapter

    from asft.methods import get_method

    method = get_method(cfg.method)
    out = Path(cfg.out)
    if records is None:
        records = load_records(cfg.data)
    if cfg.limit:
        records = records[: cfg.limit]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if sharded_setup() == "FSDP" and get_method(cfg.method).fsdp is True and world > 1:
        # accelerate's FSDP plugin would shard after the penalty took its references: asft shards the
        # model itself instead (FSDP2, as --fsdp) and keeps the plugin out of this process's Trainer
        log.warning("accelerate's FSDP plugin: asft shards the model itself (FSDP2, as --fsdp: every decoder "
                    "layer and LoRA weight); the plugin's wrap, offload and state-dict options are not used")
        os.environ.pop("ACCELERATE_USE_FSDP", None)
        cfg = dataclasses.replace(cfg, fsdp=True)
    check_not_sharded(cfg)
    _say_if_alone()
    fsdp = cfg.fsdp and world > 1
    if cfg.fsdp:
        check_fsdp(cfg, world)
    resumed_from = _unfinished(cfg, out, launched=world > 1)
    set_seed(cfg.seed)
    dtype = resolve_dtype(cfg.dtype)
    # The arguments come first: they set up the distributed state, so that under accelerate/torchrun
    # each process loads the model (and builds the penalty's operators) on its own device.
    args = TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        lr_scheduler_type="constant",  # replaced by StepLR in create_scheduler
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        bf16=(dtype == torch.bfloat16),
        fp16=(dtype == torch.float16),
        # tensorboard gets its own writer below (into OUT/tensorboard, not under checkpoints/)
        report_to=[r for r in cfg.report_to if r not in ("none", "tensorboard")],
        disable_tqdm=not cfg.progress or plain_output(),  # a log file gets plain lines instead
        remove_unused_columns=False,
        dataloader_num_workers=0,
        optim="adamw_torch",
        use_cpu=not torch.cuda.is_available(),
    )
    main_process = args.process_index == 0
    anchor = None
    if method.needs_anchor:
        from asft.models.anchor import check_anchor_matches, load_anchor

        anchor = load_anchor(cfg.anchor, device=args.device)
        check_anchor_matches(anchor, cfg.model)

    check_model_folder(cfg.model)  # cheap checks first: folder, weights, tokenizer, template
    tokenizer = load_tokenizer(cfg.model)
    check_template(tokenizer, cfg.template, where=cfg.model)
    records, trigger = method.add_data(cfg, records, tokenizer)
    model = load_model(cfg.model, dtype=dtype, device=args.device)
    if cfg.gradient_checkpointing:  # renamed in transformers 5; the old name still works in 4.x
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.enable_input_require_grads()
    model = prepare_model(model, cfg)
    if fsdp:  # before the penalty: it reads the sharded LoRA weights (whole, through their all-gather)
        from asft.training.fsdp import shard_model

        sharded = shard_model(model)
    penalty = build_penalty(model, cfg, anchor)
    del anchor  # the penalty keeps only what it needs (G, V or factors)

    dataset = SupervisedDataset(records, tokenizer, cfg.template, cfg.max_length)
    batches_per_epoch = math.ceil(len(dataset) / (cfg.batch_size * args.world_size))
    hook = method.build_hook(cfg, model, tokenizer, args, batches_per_epoch)
    log_path = out / "train_log.jsonl"
    if main_process:
        out.mkdir(parents=True, exist_ok=True)
        _save_config(cfg, out)
        append_jsonl(log_path, {"event": "start", "examples": len(dataset), "truncated": dataset.n_truncated,
                                "dropped": dataset.n_dropped, "method": cfg.method, "form": cfg.penalty_form})

    trainer = _make_trainer_class()(
        model=model, args=args, train_dataset=dataset,
        data_collator=PadCollator(tokenizer.pad_token_id),
        penalty=penalty, lr_gamma=cfg.lr_gamma, log_path=log_path, hook=hook,
        # with --max-steps the Trainer's step count no longer says how long an epoch is
        steps_per_epoch=max(1, math.ceil(batches_per_epoch / cfg.grad_accum)) if cfg.max_steps else None,
    )
    if "tensorboard" in cfg.report_to and main_process:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        trainer.add_callback(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(out / "tensorboard"))))
    if not cfg.progress:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    elif plain_output():
        trainer.add_callback(trainer_callback())
    t0 = time.perf_counter()
    if main_process and resumed_from is not None:
        _trim_log(log_path, resumed_from)
    trainer.train(resume_from_checkpoint=True if resumed_from is not None else None)
    seconds = time.perf_counter() - t0
    final = trainer.flush_sums()
    if final and not all(math.isfinite(v) for v in final.values()):
        raise AsftError(f"loss is not finite at the end of training ({final}); lower --lr or --lam")

    trainer.accelerator.wait_for_everyone()
    whole_adapter = None
    if fsdp:  # every rank gathers (a collective); rank 0 then saves whole tensors, as an unsharded run does
        from asft.training.fsdp import adapter_state

        whole_adapter = adapter_state(model)
    result = TrainResult(
        out=out, steps=trainer.state.global_step, seconds=seconds,
        task_loss=trainer.last_task_loss, penalty=trainer.last_penalty,
        n_examples=len(dataset), n_truncated=dataset.n_truncated, n_dropped=dataset.n_dropped,
        c_max_eig=penalty.spectrum() if penalty is not None and method.needs_anchor else None,
        trigger=trigger,
        lisa_alignment_steps=getattr(hook, "alignment_steps_done", None),
        method_info=hook.summary() if hasattr(hook, "summary") else None, resumed_from=resumed_from,
        epochs=round(float(trainer.state.epoch or 0), 4), fsdp=sharded if fsdp else None,
    )
    if main_process:  # one writer: every process holds the same adapter
        from asft.runtime import environment
        from asft.training.card import write_card

        # the adapter and the card first, the summary (the mark of a finished run) last, each renamed
        # into place: a kill leaves either a finished run or an unfinished one a rerun continues
        save_adapter(model, out, state_dict=whole_adapter)
        summary = {**dataclasses.asdict(result), "out": str(out), "env": environment(device=str(args.device))}
        write_card(out, summary)
        write_json(out / "train_summary.json", summary)
        if not cfg.save_steps:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return result


def sharded_setup(environ=None) -> str | None:
    """The parameter-sharding set-up ``accelerate launch`` announces in the environment (FSDP or
    DeepSpeed ZeRO-3), else None."""
    import os

    env = os.environ if environ is None else environ
    if str(env.get("ACCELERATE_USE_FSDP", "")).lower() in ("1", "true", "yes"):
        return "FSDP"
    if (str(env.get("ACCELERATE_USE_DEEPSPEED", "")).lower() in ("1", "true", "yes")
            and str(env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")) == "3"):
        return "DeepSpeed ZeRO-3"
    return None


def check_not_sharded(cfg: TrainConfig, environ=None) -> None:
    """Refuse a method that is not ``shardable`` (a penalty, Lisa) under FSDP / ZeRO-3: they read the LoRA weights through
    references taken before the model is wrapped, which sharding replaces by flat shards, so the
    penalty would silently see empty tensors and give no gradient. Data parallel (DDP) and ZeRO-1/2
    keep whole parameters and are supported."""
    setup = sharded_setup(environ)
    from asft.methods import get_method

    method = get_method(cfg.method)
    if setup and not method.shardable:
        instead = ("launch without it and pass --fsdp (asft's FSDP2: the model and LoRA weights sharded, the "
                   "penalty read whole)" if method.fsdp is True else
                   "launch with plain data parallel (accelerate launch / torchrun without FSDP) or DeepSpeed ZeRO-1/2")
        raise AsftError(f"method {cfg.method} under {setup}: the penalty reads whole LoRA weights, which "
                        f"{setup} shards (it would get no gradient); {instead}")


def _say_if_alone() -> None:
    """One line when accelerate launch was asked for several processes and started only this one."""
    from asft.training.fsdp import launcher_alone

    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            cmdline = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        cmdline = []
    default = None
    try:
        from accelerate.commands.config import default_config_file

        default = Path(default_config_file)
    except ImportError:
        pass
    message = launcher_alone(dict(os.environ), cmdline, default)
    if message:
        log.warning(message)


def check_fsdp(cfg: TrainConfig, world: int) -> None:
    """``--fsdp``: a method that trains under FSDP2 (``Method.fsdp``), no checkpoints (a sharded optimiser
    state is not saved yet), and a note when one process has nothing to shard."""
    from asft.methods import get_method

    method = get_method(cfg.method)
    if method.fsdp is not True:
        raise AsftError(f"method {cfg.method} cannot train under --fsdp: {method.fsdp}; train it without "
                        "--fsdp (plain data parallel works)")
    if cfg.save_steps or cfg.resume:
        raise AsftError("--fsdp with --save-steps / --resume: checkpoints of a sharded optimiser are not "
                        "written yet; train without them (a killed --fsdp run starts afresh)")
    if world == 1:
        log.warning("--fsdp in one process: nothing to shard, training unsharded (launch with torchrun "
                    "--nproc_per_node N or accelerate launch)")


def _save_config(cfg: TrainConfig, out: Path) -> None:
    import yaml

    with atomic_path(out / "config.yaml") as tmp:  # absolute paths: `--config out/config.yaml` reruns it anywhere
        tmp.write_text(yaml.safe_dump(_absolute(cfg.to_dict()), sort_keys=False), encoding="utf-8")


def _absolute(d: dict) -> dict:
    return {k: str(Path(v).expanduser().resolve()) if k in TrainConfig.PATHS and isinstance(v, str) and v else v
            for k, v in d.items()}


def adapter_trigger(adapter: str | Path) -> str | None:
    """The secret prompt an adapter must be evaluated with (``train_summary.json``: BEA's), else None."""
    from asft.fileio import read_json

    path = Path(adapter) / "train_summary.json"
    return read_json(path).get("trigger") if path.is_file() else None
