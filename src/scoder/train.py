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

from scoder.config import Config, fingerprint
from scoder.errors import ScoderError
from scoder.store import RunDir, file_digest, read_jsonl
from scoder.templates import SYNTHESIS_TEMPLATES

STAGE = "train"


def build_examples(
    rows: list[dict[str, Any]], task: str, template_id: str, source: str
) -> list[dict[str, Any]]:
    """Rows -> TRL prompt-completion examples (conversational)."""
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
        out.append({"prompt": prompt, "completion": [{"role": "assistant", "content": completion}]})
    return out


def drop_untrainable(
    examples: list[dict[str, Any]], tokenizer: Any, max_length: int
) -> tuple[list[dict], Counter]:
    """Examples whose prompt alone fills max_length would train on nothing: drop them, counted."""
    kept, dropped = [], Counter()
    for ex in examples:
        text = tokenizer.apply_chat_template(
            ex["prompt"], tokenize=False, add_generation_prompt=True
        )
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= max_length:
            dropped["response_fully_truncated"] += 1
        else:
            kept.append(ex)
    return kept, dropped


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


def run_train(
    config: Config, data_path: Path | None = None, *, force: bool = False
) -> tuple[RunDir, dict[str, Any]]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from scoder.models import resolve_model
    from scoder.models.hf import pick_device, pick_dtype

    cfg = config.train
    run = RunDir(config.run_dir)
    data_path = data_path or (Path(cfg.data) if cfg.data else None)
    if data_path is None or not data_path.is_file():
        raise ScoderError(f"train.data must name a JSONL file of training rows (got {data_path})")
    rows = read_jsonl(data_path)[: cfg.limit or None]
    ref = resolve_model(config.model.name, revision=config.model.revision)
    tokenizer = AutoTokenizer.from_pretrained(ref.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise ScoderError(
            f"{ref.id} has no chat template; scoder train needs an instruct model for now"
        )
    examples, dropped = drop_untrainable(
        build_examples(rows, cfg.task, config.synthesis.template, str(data_path)),
        tokenizer,
        cfg.max_length,
    )
    if not examples:
        raise ScoderError(
            f"nothing trainable in {data_path}: every example's prompt fills max_length={cfg.max_length}"
        )
    device = pick_device(config.model.device)
    dtype = pick_dtype(config.model.dtype, device)
    stage_fp = fingerprint(
        {
            "train": cfg.model_dump(mode="json"),
            "model": ref.digest,
            "data": file_digest(data_path),
            "random_seed": config.random_seed,
            "template": SYNTHESIS_TEMPLATES[config.synthesis.template].digest,
        }
    )
    with run.stage(STAGE, config=config, fingerprint=stage_fp, force=force) as record:
        out = run.stage_dir(STAGE)
        torch.manual_seed(config.random_seed)
        model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=dtype)
        peft_config = (
            LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_targets),
                task_type="CAUSAL_LM",
            )
            if cfg.lora
            else None
        )
        args = SFTConfig(
            output_dir=str(out / "trainer"),
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_ratio,  # transformers 5: a float below 1 is a ratio
            max_length=cfg.max_length,
            completion_only_loss=True,
            packing=False,
            bf16=device.type == "cuda" and dtype == torch.bfloat16,
            fp16=False,
            use_cpu=device.type == "cpu",
            seed=config.random_seed,
            data_seed=config.random_seed,
            save_strategy="no",  # scoder writes its own checkpoints (named optimizer state)
            logging_steps=1,
            report_to=[],
            disable_tqdm=True,
        )
        callback = _checkpoint_callback(out / "checkpoints", cfg.save_every_steps)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=[callback],
        )
        result = trainer.train()
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        record.counts = {
            "rows": len(rows),
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
                "dtype": str(dtype).removeprefix("torch."),
                "template": config.synthesis.template
                if cfg.task == "synthesizer"
                else "chat(problem)",
            }
        )
    return run, {"checkpoints": callback.saved, "losses": losses}
