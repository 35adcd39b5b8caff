"""The loss covers exactly the response tokens: padded, truncated and packed batches (TRL has had
bugs here, so the collated batches are checked token by token), and a batch with none is refused."""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch

from scoder.config import load_config
from scoder.errors import ScoderError


@pytest.fixture(scope="module")
def dp_rows():
    text = (resources.files("scoder") / "data" / "dp_mbpp_train.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()[:6]]


def _trainer(tmp_path, model_dir, rows, *sets, task="synthesizer"):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scoder.train import build_examples, build_trainer, drop_untrainable, resolve_template

    config = load_config(
        None,
        [
            f"run_dir={tmp_path}",
            f"model.name={model_dir}",
            "train.batch_size=3",
            "train.lora_targets=[q_proj, v_proj]",
            *sets,
        ],
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    plain = resolve_template(config.train, tokenizer, str(model_dir))
    examples = build_examples(rows, task, config.synthesis.template, "rows", plain=plain)
    examples, _ = drop_untrainable(examples, tokenizer, config.train.max_length)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = build_trainer(config, model, tokenizer, examples, tmp_path)
    return trainer, tokenizer, examples


def _prompt_ids(example, tokenizer) -> list[int]:
    if isinstance(example["prompt"], str):
        return tokenizer(example["prompt"])["input_ids"]
    text = tokenizer.apply_chat_template(
        example["prompt"], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected(example, tokenizer) -> tuple[list[int], int]:
    """(prompt + response token ids, where the response starts), tokenized independently of TRL."""
    if isinstance(example["prompt"], str):
        full = tokenizer(example["prompt"] + example["completion"])["input_ids"]
        full = full + [tokenizer.eos_token_id]  # TRL appends EOS to plain completions
    else:
        text = tokenizer.apply_chat_template(
            example["prompt"] + example["completion"], tokenize=False
        )
        full = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = _prompt_ids(example, tokenizer)
    start = len(prompt)
    assert full[:start] == prompt
    return full, start


def _check_rows(batch, examples, tokenizer, max_length):
    """Every padded row: real tokens are a (truncated) example; labels exactly its response part."""
    expected = [_expected(ex, tokenizer) for ex in examples]
    seen = 0
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        n = int(mask.sum())
        ids, labels = ids[:n].tolist(), labels.tolist()
        assert all(label == -100 for label in labels[n:])  # padding never counts
        match = [(full, start) for full, start in expected if full[:max_length] == ids]
        assert len(match) == 1, "a collated row is not one of the examples"
        full, start = match[0]
        want = [-100] * start + full[start:max_length]
        assert labels[:n] == want
        seen += 1
    return seen


def test_padded_batches_train_on_the_response_only(tmp_path, tiny_model_dir, dp_rows):
    trainer, tokenizer, examples = _trainer(tmp_path, tiny_model_dir, dp_rows)
    rows = 0
    for batch in trainer.get_train_dataloader():
        rows += _check_rows(batch, examples, tokenizer, 10**9)
    assert rows == len(examples) == 6


def test_truncated_responses_keep_only_their_surviving_tokens(tmp_path, tiny_model_dir, dp_rows):
    trainer, tokenizer, examples = _trainer(tmp_path, tiny_model_dir, dp_rows)
    shortest_prompt = min(len(_prompt_ids(ex, tokenizer)) for ex in examples)
    max_length = shortest_prompt + 5  # some responses keep five tokens, longer prompts none
    trainer, tokenizer, kept = _trainer(
        tmp_path, tiny_model_dir, dp_rows, f"train.max_length={max_length}"
    )
    assert 0 < len(kept) <= len(examples)
    rows = 0
    for batch in trainer.get_train_dataloader():
        assert batch["input_ids"].shape[1] <= max_length
        rows += _check_rows(batch, kept, tokenizer, max_length)
        assert ((batch["labels"] != -100).sum(dim=1) >= 1).all()
    assert rows == len(kept)


def test_packed_batches_mask_prompts_and_never_attend_across_examples(
    tmp_path, tiny_model_dir, dp_rows
):
    trainer, tokenizer, examples = _trainer(
        tmp_path, tiny_model_dir, dp_rows, "train.packing=true", "train.max_length=4096"
    )
    expected = [_expected(ex, tokenizer) for ex in examples]
    model = trainer.model.eval()
    docs = 0
    for batch in trainer.get_train_dataloader():
        assert batch["input_ids"].shape[0] == 1  # padding-free: one flat row
        ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
        positions = batch["position_ids"][0].tolist()
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        assert len(starts) - 1 >= 2  # several examples share the row
        with torch.no_grad():
            packed = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0]
        for a, b in zip(starts, starts[1:]):
            doc = ids[a:b]
            match = [(full, start) for full, start in expected if full == doc]
            assert len(match) == 1, "a packed span is not one whole example"
            full, start = match[0]
            assert labels[a:b] == [-100] * start + full[start:]
            with torch.no_grad():
                alone = model(input_ids=torch.tensor([doc])).logits[0]
            # identical logits: the packed example saw nothing of its neighbours
            torch.testing.assert_close(packed[a:b], alone, atol=1e-4, rtol=1e-4)
            docs += 1
    assert docs == len(examples)


def test_plain_template_for_base_models(tmp_path, tiny_base_model_dir, dp_rows):
    trainer, tokenizer, examples = _trainer(tmp_path, tiny_base_model_dir, dp_rows, task="code")
    assert isinstance(examples[0]["prompt"], str)
    assert examples[0]["prompt"].startswith("### Instruction\n")
    assert examples[0]["prompt"].endswith("### Response\n")
    for batch in trainer.get_train_dataloader():
        _check_rows(batch, examples, tokenizer, 10**9)
    with pytest.raises(ScoderError, match="has no chat template; set train.template=plain"):
        _trainer(tmp_path, tiny_base_model_dir, dp_rows, "train.template=chat")


def test_a_batch_without_response_tokens_is_refused(tmp_path, tiny_model_dir, dp_rows):
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir, dp_rows)
    prompt_only = [{"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}] * 2
    with pytest.raises(ScoderError, match="has no response tokens"):
        trainer.data_collator(prompt_only)


@pytest.mark.parametrize(
    ("model", "sets"),
    [
        ("tiny_model_dir", []),  # an instruct model: its chat template
        ("tiny_base_model_dir", []),  # a base model: the plain transcript
        ("tiny_model_dir", ["train.template=plain"]),  # an instruct model trained on plain text
        ("tiny_model_dir", ["truncate"]),  # truncated as the trainer truncates
    ],
)
def test_influence_reads_exactly_the_tokens_and_loss_mask_the_trainer_trains_on(
    request, tmp_path, dp_rows, model, sets
):
    """Every row TRL's collator hands the trainer equals, token for token and mask for mask, the
    micro-batch row the influence featurizer builds for the same sample."""
    from scoder.influence import GradientFeaturizer
    from scoder.select import training_examples

    model_dir = request.getfixturevalue(model)
    if sets == ["truncate"]:  # some responses keep five tokens, longer prompts none
        trainer, tokenizer, examples = _trainer(tmp_path, model_dir, dp_rows)
        sets = [f"train.max_length={min(len(_prompt_ids(ex, tokenizer)) for ex in examples) + 5}"]
    trainer, tokenizer, _ = _trainer(tmp_path, model_dir, dp_rows, *sets)
    config = load_config(None, [f"model.name={model_dir}", *sets])
    examples = training_examples(dp_rows, tokenizer, config, "rows")
    featurizer = GradientFeaturizer(
        trainer.model, max_length=config.train.max_length, pad_token_id=tokenizer.pad_token_id
    )
    ours = []
    for ex in examples:
        row = featurizer.batch_inputs([ex])
        ours.append((row["input_ids"][0].tolist(), row["loss_mask"][0].tolist()))
    seen = []
    for batch in trainer.get_train_dataloader():
        for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
            n = int(mask.sum())
            theirs = (ids[:n].tolist(), [int(label != -100) for label in labels[:n].tolist()])
            assert theirs in ours, "a trainer row the featurizer would tokenize differently"
            seen.append(ours.index(theirs))
    trained = [i for i, (_, m) in enumerate(ours) if any(m[1:])]  # TRL drops rows with no loss
    assert sorted(seen) == trained and trained
