"""`scoder train`: supervised fine-tuning with TRL, LoRA via peft, checkpoints for influence.

Two tasks share it: `synthesizer` (synthesis prompt + seed snippet -> problem, solution, tests)
and `code` (problem -> solution). Loss is on the completion only (TRL's prompt-completion format
with completion_only_loss). bf16 on CUDA, fp32 on CPU (no native bf16 here). At the end of every
epoch (or every `save_every_steps`) a scoder checkpoint is written: the adapter, Adam's state
keyed by parameter name, and the mean learning rate over the span it closes (scoder.checkpoints),
which is what the influence stage needs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from scoder.config import Config, TrainConfig, fingerprint
from scoder.errors import ScoderError
from scoder.store import RunDir, file_digest, read_jsonl
from scoder.templates import PLAIN_TEMPLATE_ID, SYNTHESIS_TEMPLATES, render_plain

STAGE = "train"


def build_examples(
    rows: list[dict[str, Any]],
    task: str,
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
            prompt = template.chat(row["seed_text"])[:-1]
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


def prompt_ids(example: dict[str, Any], tokenizer: Any) -> list[int]:
    """The tokens of an example's prompt, as TRL tokenizes it."""
    if isinstance(example["prompt"], str):
        return tokenizer(example["prompt"])["input_ids"]
    text = tokenizer.apply_chat_template(
        example["prompt"], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def drop_untrainable(
    examples: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> tuple[list[dict], Counter]:
    """Examples whose prompt alone fills max_length would train on nothing: drop them, counted."""
    kept, dropped = [], Counter()
    for ex in examples:
        if len(prompt_ids(ex, tokenizer)) >= max_length:
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


def _checkpoint_callback(out: Path, save_every_steps: int | None) -> Any:
    from transformers import TrainerCallback

    from scoder.checkpoints import save_checkpoint

    class SaveForInfluence(TrainerCallback):
        """Writes scoder checkpoints with the mean learning rate of the span each one closes."""

        def __init__(self) -> None:
            self.lr_sum, self.steps, self.saved = 0.0, 0, []
            self.optimizer = None

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

        def _save(self, model, state, name):
            if not self.steps:
                return
            optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # accelerate wraps it
            path = save_checkpoint(
                out / name,
                model,
                optimizer,
                mean_lr=self.lr_sum / self.steps,
                step=state.global_step,
            )
            self.saved.append(
                {"path": str(path), "mean_lr": self.lr_sum / self.steps, "step": state.global_step}
            )
            self.lr_sum, self.steps = 0.0, 0

    return SaveForInfluence()


def _examples(
    path: Path, config: Config, tokenizer: Any, plain: bool
) -> tuple[list[dict], int, Counter]:
    cfg = config.train
    rows = read_jsonl(path)[: cfg.limit or None]
    built = build_examples(rows, cfg.task, config.synthesis.template, str(path), plain=plain)
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
) -> Any:
    """TRL's SFTTrainer as scoder configures it: completion-only loss, LoRA or full, optional
    packing, bf16 on CUDA and fp32 elsewhere, no HF checkpoints (scoder writes its own)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    cfg = config.train
    device = next(model.parameters()).device
    from peft import PeftModel

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
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
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
        save_strategy="no",  # scoder writes its own checkpoints (named optimizer state)
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
        **evaluate_every,
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
    return trainer


def run_train(
    config: Config, data_path: Path | None = None, *, force: bool = False
) -> tuple[RunDir, dict[str, Any]]:
    """Fine-tune config.model on config.train.data; checkpoints land in RUN/train/checkpoints/."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scoder.models import resolve_model
    from scoder.models.hf import pick_device, pick_dtype

    cfg = config.train
    run = RunDir(config.run_dir)
    data_path = data_path or (Path(cfg.data) if cfg.data else None)
    if data_path is None or not data_path.is_file():
        raise ScoderError(f"train.data must name a JSONL file of training rows (got {data_path})")
    if (
        cfg.init_adapter is not None
        and not (Path(cfg.init_adapter) / "adapter_config.json").is_file()
    ):
        raise ScoderError(f"train.init_adapter is not a LoRA adapter directory: {cfg.init_adapter}")
    if cfg.eval_data is not None and not Path(cfg.eval_data).is_file():
        raise ScoderError(f"train.eval_data: no such file: {cfg.eval_data}")
    ref = resolve_model(config.model.name, revision=config.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    plain = resolve_template(cfg, tokenizer, ref.id)
    examples, n_rows, dropped = _examples(data_path, config, tokenizer, plain)
    eval_examples = (
        _examples(Path(cfg.eval_data), config, tokenizer, plain)[0] if cfg.eval_data else None
    )
    device = pick_device(config.model.device)
    dtype = pick_dtype(config.model.dtype, device)
    if cfg.task == "synthesizer":
        template = SYNTHESIS_TEMPLATES[config.synthesis.template]
        template_name, template_digest = template.id, template.digest
    else:
        template_name, template_digest = "code-v1 (problem -> fenced solution)", None
    format_name = PLAIN_TEMPLATE_ID if plain else "chat template"
    stage_fp = fingerprint(
        {
            "train": cfg.model_dump(mode="json"),
            "model": ref.digest,
            "data": file_digest(data_path),
            "eval_data": file_digest(cfg.eval_data) if cfg.eval_data else None,
            "init_adapter": file_digest(Path(cfg.init_adapter) / "adapter_model.safetensors")
            if cfg.init_adapter
            else None,
            "random_seed": config.random_seed,
            "template": [template_name, template_digest, format_name],
        }
    )
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(STAGE)
        torch.manual_seed(config.random_seed)
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype).to(device)
        if cfg.init_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.init_adapter, is_trainable=True)
        callback = _checkpoint_callback(out / "checkpoints", cfg.save_every_steps)
        trainer = build_trainer(
            config,
            model,
            tokenizer,
            examples,
            out,
            eval_examples=eval_examples,
            callbacks=[callback],
        )
        eval_losses = [trainer.evaluate()["eval_loss"]] if eval_examples else []
        result = trainer.train()
        history = trainer.state.log_history
        losses = [entry["loss"] for entry in history if "loss" in entry]
        # train() starts a fresh log history: the evaluation before it is not in there
        eval_losses += [entry["eval_loss"] for entry in history if "eval_loss" in entry]
        merged = None
        if cfg.merge:
            merged = out / "model"
            final = trainer.model.merge_and_unload() if cfg.lora else trainer.model
            final.save_pretrained(merged)
            tokenizer.save_pretrained(merged)
        record.counts = {
            "rows": n_rows,
            "examples": len(examples),
            "dropped_by_reason": dict(dropped),
            "steps": trainer.state.global_step,
            "checkpoints": len(callback.saved),
        }
        record.info.update(
            {
                "task": cfg.task,
                "model": ref.describe(),
                "checkpoints": callback.saved,
                "train_loss": result.training_loss,
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "eval_losses": eval_losses,
                "dtype": str(dtype).removeprefix("torch."),
                "template": template_name,
                "template_digest": template_digest,
                "format": format_name,
                "packing": cfg.packing,
                "merged_model": str(merged) if merged else None,
            }
        )
    return run, {
        "checkpoints": callback.saved,
        "losses": losses,
        "eval_losses": eval_losses,
        "trainer": trainer,
        "merged_model": merged,
    }
