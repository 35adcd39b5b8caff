"""`scoder train`: supervised fine-tuning with TRL, LoRA via peft, checkpoints for influence.

Two tasks share it: `synthesizer` (synthesis prompt + seed snippet -> problem, solution, tests)
and `code` (problem -> solution). Loss is on the completion only (TRL's prompt-completion format
with completion_only_loss). bf16 on CUDA, fp32 on CPU (no native bf16 here). At the end of every
epoch (or every `save_every_steps`) a scoder checkpoint is written: the adapter, Adam's state
keyed by parameter name, and the mean learning rate over the span it closes (scoder.checkpoints),
which is what the influence stage needs.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from scoder import launch
from scoder.checkpoints import CHECKPOINT_INFO, Sharding, adam_moments, save_checkpoint
from scoder.config import Config, ModelConfig, TrainConfig
from scoder.errors import ScoderError
from scoder.influence import Example
from scoder.models import load_causal_lm, load_tokenizer, resolve_model
from scoder.progress import ProgressTask, say, track
from scoder.store import RunDir, file_digest, fingerprint, read_jsonl, write_json
from scoder.templates import PLAIN_TEMPLATE_ID, SYNTHESIS_TEMPLATES, render_plain

STAGE = "train"
VERSION = "train/1"  # bump when the same inputs would train another model
# Why training leaves an example out (counted in the manifest's `dropped_by_reason`).
TrainDrop = Literal["response_fully_truncated"]
Task = Literal["synthesizer", "code"]


def build_examples(
    rows: list[dict[str, Any]],
    task: Task,
    template_id: str,
    source: str,
    *,
    plain: bool = False,
) -> list[dict[str, Any]]:
    """Rows -> TRL prompt-completion examples: conversational (chat template), or plain strings
    (`render_plain`, for base models)."""
    template = SYNTHESIS_TEMPLATES[template_id]
    needed = (
        ("seed_text", "problem", "solution") if task == "synthesizer" else ("problem", "solution")
    )
    out = []
    for i, row in enumerate(rows):
        for key in needed:
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ScoderError(f"{source}: row {i + 1} has no text field {key!r}")
        if task == "synthesizer":
            prompt = template.chat(row["seed_text"])
            completion = template.answer(row["problem"], row["solution"], row.get("tests"))
        else:
            prompt = [{"role": "user", "content": row["problem"]}]
            completion = f"```python\n{row['solution'].strip()}\n```"
        if plain:
            out.append({"prompt": render_plain(prompt), "completion": completion})
        else:
            out.append(
                {"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]}
            )
    return out


def tokenize_example(example: dict[str, Any], tokenizer: Any) -> Example:
    """One prompt-completion example as the tokens TRL's SFTTrainer trains on (before truncation).

    As TRL tokenizes it: a conversational example is rendered by the chat template twice, the
    prompt alone (with the generation prompt) and prompt + completion, and the completion (the
    loss) starts where the two token sequences diverge, so the template's own end-of-turn tokens
    are part of it; a plain example gets the end-of-sequence token appended to its completion and
    is tokenized as text (special tokens as the tokenizer adds them). The influence stage reads its
    gradients off exactly these tokens; a test holds both against TRL's collator.
    """
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, str):
        eos = tokenizer.eos_token or ""
        if not completion.endswith(eos):
            completion += eos
        prompt_part = tokenizer(text=prompt)["input_ids"]
        whole = tokenizer(text=prompt + completion)["input_ids"]
    else:
        prompt_part = tokenizer.apply_chat_template(
            prompt, tokenize=True, return_dict=True, add_generation_prompt=True
        )["input_ids"]
        whole = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)[
            "input_ids"
        ]
    shared = 0
    for a, b in zip(prompt_part, whole):
        if a != b:
            break
        shared += 1
    return Example(list(whole[:shared]), list(whole[shared:]))


def drop_untrainable(
    examples: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> tuple[list[dict], Counter]:
    """Examples whose prompt alone fills max_length would train on nothing: drop them, counted."""
    kept, dropped = [], Counter[TrainDrop]()
    for ex in examples:
        if len(tokenize_example(ex, tokenizer).prompt_ids) >= max_length:
            dropped["response_fully_truncated"] += 1
        else:
            kept.append(ex)
    return kept, dropped


class ResponseTokenGuard:
    """Wraps TRL's collator: a batch without a single response token would give a NaN loss (0/0)
    and silently corrupt the adapter, so it is refused with a clear message instead."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        if not bool((batch["labels"] != -100).any()):
            raise ScoderError(
                f"a training batch of {len(examples)} example(s) has no response tokens to learn "
                "from (prompts fill max_length, or responses are empty): raise train.max_length "
                "or fix the data"
            )
        return batch


def resolve_template(cfg: TrainConfig, tokenizer: Any, model_id: str) -> bool:
    """Whether to train on the plain transcript (True) or the chat template (False)."""
    if cfg.template == "chat" and not tokenizer.chat_template:
        raise ScoderError(
            f"{model_id} has no chat template; set train.template=plain (or auto) for a base model"
        )
    return cfg.template == "plain" or (cfg.template == "auto" and not tokenizer.chat_template)


def _progress_callback(progress: ProgressTask) -> Any:
    from transformers import TrainerCallback

    class StepProgress(TrainerCallback):
        """The training's steps and latest loss on its progress line."""

        def on_train_begin(self, args, state, control, **kwargs):
            progress.set_total(state.max_steps)

        def on_step_end(self, args, state, control, **kwargs):
            progress.advance(1)

        def on_log(self, args, state, control, logs=None, **kwargs):
            for key in ("loss", "eval_loss"):
                if logs and key in logs:
                    progress.note(**{key: float(logs[key])})

    return StepProgress()


def _checkpoint_callback(out: Path, save_every_steps: int | None) -> Any:
    from transformers import TrainerCallback

    class SaveForInfluence(TrainerCallback):
        """Writes scoder checkpoints with the mean learning rate of the span each one closes."""

        def __init__(self) -> None:
            self.lr_sum, self.steps, self.saved = 0.0, 0, []
            self.optimizer = None
            self.trainer: Any = None  # set once the trainer exists

        def on_step_begin(self, args, state, control, **kwargs):
            # the learning rate this optimizer step will use
            scheduler = kwargs.get("lr_scheduler")
            if scheduler is not None:
                self.lr_sum += scheduler.get_last_lr()[0]
                self.steps += 1

        def on_step_end(self, args, state, control, **kwargs):
            self.optimizer = kwargs.get("optimizer") or self.optimizer
            if save_every_steps and state.global_step % save_every_steps == 0:
                self._save(kwargs["model"], state, f"step-{state.global_step}")

        def on_epoch_end(self, args, state, control, **kwargs):
            if not save_every_steps:
                self._save(kwargs["model"], state, f"epoch-{round(state.epoch)}")

        def on_train_end(self, args, state, control, **kwargs):
            # the steps after the last multiple of save_every_steps (or all of them, when there
            # are fewer): the last checkpoint is always the trained model
            self._save(kwargs["model"], state, f"step-{state.global_step}")

        def resume_at(self, step: int) -> None:
            """Continue a training cut short at `step`: its checkpoints up to that step are
            kept (the trainer's checkpoint closes a span, so no learning rate is owed); later
            ones were removed (`discard_after`) and are made again."""
            for path in sorted(out.glob("*/" + CHECKPOINT_INFO)):
                info = json.loads(path.read_text())
                if info["step"] <= step:
                    self.saved.append(
                        {"path": str(path.parent), "mean_lr": info["mean_lr"], "step": info["step"]}
                    )
            self.saved.sort(key=lambda c: c["step"])

        def _save(self, model, state, name):
            if not self.steps:
                return
            trainer = self.trainer
            optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
            sharding = _sharding(trainer)
            # sharded: every process takes part in gathering, the first one writes
            wrapped = trainer.model_wrapped if sharding == "fsdp" else model
            moments = adam_moments(wrapped, optimizer, sharding)
            whole = trainer.accelerator.get_state_dict(wrapped) if sharding != "none" else None
            mean_lr = self.lr_sum / self.steps
            self.lr_sum, self.steps = 0.0, 0
            path = out / name
            if state.is_world_process_zero:
                save_checkpoint(
                    path,
                    model,
                    optimizer,
                    mean_lr=mean_lr,
                    step=state.global_step,
                    moments=moments,
                    state_dict=whole,
                )
            self.saved.append({"path": str(path), "mean_lr": mean_lr, "step": state.global_step})

    return SaveForInfluence()


def _examples(
    path: Path, config: Config, cfg: TrainConfig, task: Task, tokenizer: Any, plain: bool
) -> tuple[list[dict], int, Counter]:
    rows = read_jsonl(path)[: cfg.limit or None]
    built = build_examples(rows, task, config.synthesis.template, str(path), plain=plain)
    examples, dropped = drop_untrainable(built, tokenizer, cfg.max_length)
    if not examples:
        raise ScoderError(
            f"nothing trainable in {path}: every example's prompt fills max_length={cfg.max_length}"
        )
    return examples, len(rows), dropped


def build_trainer(
    config: Config,
    model: Any,
    tokenizer: Any,
    train_examples: list[dict],
    out: Path,
    *,
    eval_examples: list[dict] | None = None,
    callbacks: list[Any] = (),
    train_cfg: TrainConfig | None = None,
) -> Any:
    """TRL's SFTTrainer as scoder configures it: completion-only loss, LoRA or full, optional
    packing, bf16 on CUDA and fp32 elsewhere, no HF checkpoints (scoder writes its own)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, PeftModel
    from trl import SFTConfig, SFTTrainer

    cfg = train_cfg or config.train
    device = next(model.parameters()).device
    already_adapted = isinstance(model, PeftModel)  # continuing an earlier adapter
    peft_config = (
        LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.lora_targets),
            task_type="CAUSAL_LM",
        )
        if cfg.lora and not already_adapted
        else None
    )
    evaluate_every = {"eval_strategy": "no"}
    if eval_examples:
        evaluate_every = (
            {"eval_strategy": "steps", "eval_steps": cfg.save_every_steps}
            if cfg.save_every_steps
            else {"eval_strategy": "epoch"}
        )
    args = SFTConfig(
        output_dir=str(out / "trainer"),
        num_train_epochs=cfg.epochs,
        # train.batch_size is the batch of all processes together: the same steps on any number
        per_device_train_batch_size=cfg.batch_size // cfg.distributed.processes,
        per_device_eval_batch_size=cfg.batch_size // cfg.distributed.processes,
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio
        max_length=cfg.max_length,
        completion_only_loss=True,
        packing=cfg.packing,
        packing_strategy="bfd",
        bf16=device.type == "cuda" and model.dtype == torch.bfloat16,
        fp16=False,
        use_cpu=device.type == "cpu",
        seed=config.random_seed,
        data_seed=config.random_seed,
        # The trainer's own checkpoints (optimizer, scheduler, RNG, place in the data), at
        # scoder's cadence, only the last kept: a training cut short resumes from it. scoder
        # writes its own checkpoints (named Adam state, mean lr) beside them.
        save_strategy=(
            "no" if not cfg.resume_points else "steps" if cfg.save_every_steps else "epoch"
        ),
        save_steps=cfg.save_every_steps or 500,
        save_total_limit=1,
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        **evaluate_every,
        **launch.trainer_arguments(cfg.distributed, on_cuda=device.type == "cuda"),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(eval_examples) if eval_examples else None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(callbacks),
    )
    trainer.data_collator = ResponseTokenGuard(trainer.data_collator)
    from transformers.trainer_callback import PrinterCallback

    # the trainer's log dictionaries are not for a terminal: losses are in the stage's manifest
    trainer.remove_callback(PrinterCallback)
    return trainer


class FitJob(BaseModel):
    """One training, whole: what `fit` needs, in this process or in each of several."""

    config: Config
    model: ModelConfig
    train: TrainConfig
    task: Task
    data: Path
    eval_data: Path | None
    init_adapter: Path | None
    merge: bool
    checkpoints: bool
    out: Path


class Fit(BaseModel):
    """What a training made: its checkpoints, losses and, when asked, the merged model."""

    checkpoints: list[dict[str, Any]]
    losses: list[float]
    eval_losses: list[float]
    train_loss: float
    steps: int
    resumed_at_step: int | None
    dtype: str
    merged_model: Path | None
    sharding: str = (
        "none"  # what the trainer really did: none (one process or DDP), fsdp, deepspeed
    )
    processes: int = 1


def fit(
    job: FitJob,
    *,
    examples: list[dict] | None = None,
    eval_examples: list[dict] | None = None,
) -> tuple[Fit, Any]:
    """Train as `job` says (in this process, or as one of a distributed training's processes:
    then the first one writes) and return what it made, and the trainer."""
    import torch

    cfg, model_cfg = job.train, job.model
    ref = resolve_model(model_cfg.name, revision=model_cfg.revision)
    tokenizer = load_tokenizer(ref)
    plain = resolve_template(cfg, tokenizer, ref.id)
    if examples is None:
        examples = _examples(job.data, job.config, cfg, job.task, tokenizer, plain)[0]
        if job.eval_data:
            eval_examples = _examples(job.eval_data, job.config, cfg, job.task, tokenizer, plain)[0]
    torch.manual_seed(job.config.random_seed)
    network = load_causal_lm(
        ref,
        device=model_cfg.device,
        dtype=model_cfg.dtype,
        adapter=job.init_adapter,
        trainable=True,
        attn_implementation=cfg.attn_implementation,
    )
    callback = _checkpoint_callback(job.out / "checkpoints", cfg.save_every_steps)
    trainer = build_trainer(
        job.config,
        network,
        tokenizer,
        examples,
        job.out,
        eval_examples=eval_examples,
        callbacks=[callback] if job.checkpoints else [],
        train_cfg=cfg,
    )
    callback.trainer = trainer
    _check_sharding(trainer, cfg)
    eval_losses = [trainer.evaluate()["eval_loss"]] if eval_examples else []
    # a cut-short attempt of this same training (same fingerprint) left the trainer's
    # checkpoint: continue from it
    resume = _last_trainer_checkpoint(job.out)
    if resume is not None:
        callback.resume_at(resume[1])
        if trainer.is_world_process_zero():
            say(f"resuming: the training continues from step {resume[1]}, its last saved state")
    with track(f"training ({job.task})", total=None, unit="steps") as progress:
        trainer.add_callback(_progress_callback(progress))
        result = trainer.train(resume_from_checkpoint=resume[0] if resume else None)
    first = trainer.is_world_process_zero()
    if first:
        for done in (job.out / "trainer").glob("checkpoint-*"):  # only for resuming
            shutil.rmtree(done)
    history = trainer.state.log_history
    # train() starts a fresh log history: the evaluation before it is not in there
    eval_losses += [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    merged = None
    if job.merge:
        merged = job.out / "model"
        if cfg.lora:
            if first:
                trainer.model.merge_and_unload().save_pretrained(merged)
        else:
            trainer.save_model(str(merged))  # gathers a sharded model's weights
        if first:
            tokenizer.save_pretrained(merged)
    fitted = Fit(
        checkpoints=callback.saved,
        losses=[entry["loss"] for entry in history if "loss" in entry],
        eval_losses=eval_losses,
        train_loss=result.training_loss,
        steps=trainer.state.global_step,
        resumed_at_step=resume[1] if resume else None,
        dtype=str(network.dtype).removeprefix("torch."),
        merged_model=merged,
        sharding=_sharding(trainer),
        processes=trainer.args.world_size,
    )
    return fitted, trainer


def _sharding(trainer: Any) -> Sharding:
    if trainer.is_deepspeed_enabled:
        return "deepspeed"
    return "fsdp" if trainer.is_fsdp_enabled else "none"


def _check_sharding(trainer: Any, cfg: TrainConfig) -> None:
    """accelerate quietly trains without FSDP where it has no accelerator (a CPU): say so
    instead of running another strategy than the one asked for."""
    dist = cfg.distributed
    wanted = {"ddp": "none", "fsdp": "fsdp", "zero2": "deepspeed", "zero3": "deepspeed"}
    if (
        dist.accelerate_config is None
        and dist.processes > 1
        and _sharding(trainer) != wanted[dist.strategy]
    ):
        raise ScoderError(
            f"train.distributed.strategy={dist.strategy}, but the trainer runs "
            f"{_sharding(trainer)!r} sharding here: accelerate shards (FSDP, DeepSpeed) only "
            "on GPUs or other accelerators; use strategy ddp on CPU"
        )


def fit_elsewhere(job: FitJob) -> Fit:
    """`fit` on train.distributed's processes (scoder.launch); the first one leaves its result."""
    where = job.out / "distributed"
    where.mkdir(parents=True, exist_ok=True)
    job_file, result_file = where / "job.json", where / "result.json"
    result_file.unlink(missing_ok=True)
    write_json(job_file, job.model_dump(mode="json"))
    launch.run(job.train.distributed, job_file, where / "log.txt")
    if not result_file.is_file():
        raise ScoderError(f"the distributed training ended without its result ({result_file})")
    return Fit.model_validate_json(result_file.read_text())


def _last_trainer_checkpoint(out: Path) -> tuple[str, int] | None:
    """The trainer's own checkpoint a cut-short training left, and its step."""
    from transformers.trainer_utils import get_last_checkpoint

    found = get_last_checkpoint(str(out / "trainer")) if (out / "trainer").is_dir() else None
    if not found:
        return None
    return found, json.loads((Path(found) / "trainer_state.json").read_text())["global_step"]


def discard_after(checkpoints: Path, step: int) -> None:
    """A training resumed at `step` makes its later scoder checkpoints again: remove them."""
    for path in sorted(checkpoints.glob("*/" + CHECKPOINT_INFO)):
        if json.loads(path.read_text())["step"] > step:
            shutil.rmtree(path.parent)


def run_train(
    config: Config,
    data_path: Path | None,
    *,
    task: Task = "synthesizer",
    eval_data: Path | None = None,
    init_adapter: Path | None = None,
    merge: bool = False,
    model: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    checkpoints: bool = True,
    run: RunDir | None = None,
    force: bool = False,
) -> tuple[RunDir, dict[str, Any]]:
    """Fine-tune `model` (default config.model) on the rows of `data_path`; checkpoints land in
    RUN/train/checkpoints/.

    `eval_data`: rows whose completion loss is measured before training and after every epoch
    (e.g. held-out D_p). `init_adapter`: continue this LoRA adapter instead of a fresh one.
    `merge`: also write the model with the adapter merged (RUN/train/model/), loadable without
    peft. `model` and `train_cfg` default to the synthesizer's (config.model, config.train); the
    code model has its own. `checkpoints=False` writes no per-epoch checkpoints (a code model
    needs only its final weights, and a full fine-tune's Adam state is twice the model).
    """

    cfg = train_cfg or config.train
    model_cfg = model or config.model
    run = run or RunDir(config.run_dir)
    problems = []
    if data_path is None or not Path(data_path).is_file():
        problems.append(f"--data must name a JSONL file of training rows (got {data_path})")
    if init_adapter is not None and not (Path(init_adapter) / "adapter_config.json").is_file():
        problems.append(f"--init-adapter is not a LoRA adapter directory: {init_adapter}")
    if eval_data is not None and not Path(eval_data).is_file():
        problems.append(f"--eval-data: no such file: {eval_data}")
    if problems:
        raise ScoderError("train: " + "; ".join(problems))
    data_path = Path(data_path)  # type: ignore[arg-type]
    ref = resolve_model(model_cfg.name, revision=model_cfg.revision)
    tokenizer = load_tokenizer(ref)
    plain = resolve_template(cfg, tokenizer, ref.id)
    examples, n_rows, dropped = _examples(data_path, config, cfg, task, tokenizer, plain)
    eval_examples = (
        _examples(Path(eval_data), config, cfg, task, tokenizer, plain)[0] if eval_data else None
    )
    if task == "synthesizer":
        template = SYNTHESIS_TEMPLATES[config.synthesis.template]
        template_name, template_digest = template.id, template.digest
    else:
        template_name, template_digest = "code-v1 (problem -> fenced solution)", None
    format_name = PLAIN_TEMPLATE_ID if plain else "chat template"
    stage_fp = fingerprint(
        {
            "train": cfg.identity(),
            "task": task,
            "merge": merge,
            "checkpoints": checkpoints,
            "model": ref.digest,
            "device": model_cfg.device,
            "dtype": model_cfg.dtype,
            "data": file_digest(data_path),
            "eval_data": file_digest(eval_data) if eval_data else None,
            "init_adapter": file_digest(Path(init_adapter) / "adapter_model.safetensors")
            if init_adapter
            else None,
            "random_seed": config.random_seed,
            "template": [template_name, template_digest, format_name],
        }
    )
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(STAGE)
        job = FitJob(
            config=config,
            model=model_cfg,
            train=cfg,
            task=task,
            data=data_path,
            eval_data=eval_data,
            init_adapter=init_adapter,
            merge=merge,
            checkpoints=checkpoints,
            out=out,
        )
        resume = _last_trainer_checkpoint(out)
        if resume is not None:
            discard_after(out / "checkpoints", resume[1])
        if cfg.distributed.processes > 1 or cfg.distributed.accelerate_config is not None:
            fitted, trainer = fit_elsewhere(job), None
        else:
            fitted, trainer = fit(job, examples=examples, eval_examples=eval_examples)
        if fitted.resumed_at_step is not None:
            record.info["resumed_at_step"] = fitted.resumed_at_step
        losses, eval_losses, merged = fitted.losses, fitted.eval_losses, fitted.merged_model
        record.counts = {
            "rows": n_rows,
            "examples": len(examples),
            "dropped_by_reason": dict(dropped),
            "steps": fitted.steps,
            "checkpoints": len(fitted.checkpoints),
        }
        record.info.update(
            {
                "task": task,
                "model": ref.describe(),
                "checkpoints": fitted.checkpoints,
                "train_loss": fitted.train_loss,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "eval_losses": eval_losses,
                "dtype": fitted.dtype,
                "processes": fitted.processes,
                "sharding": fitted.sharding,
                "template": template_name,
                "template_digest": template_digest,
                "format": format_name,
                "packing": cfg.packing,
                "merged_model": str(merged) if merged else None,
            }
        )
    return run, {
        "checkpoints": fitted.checkpoints,
        "losses": losses,
        "eval_losses": eval_losses,
        "trainer": trainer,
        "merged_model": merged,
    }


def training_examples(
    rows: list[dict[str, Any]], tokenizer: Any, config: Config, source: str
) -> list[Example]:
    """The synthesizer's training samples as the tokens its trainer sees: built by the code that
    builds them for `scoder train` (template, chat or plain format) and tokenized as TRL does."""
    plain = resolve_template(config.train, tokenizer, config.model.name or "the synthesizer")
    examples = build_examples(rows, "synthesizer", config.synthesis.template, source, plain=plain)
    return [tokenize_example(ex, tokenizer) for ex in examples]
