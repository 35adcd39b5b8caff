"""Helpers of the tests that run the loop (and the experiment) on the tiny model trained to
answer like a synthesizer and a judge (`train_parrot`, conftest's parrot_model_dir)."""

from __future__ import annotations

from pathlib import Path

import yaml

ANSWER_PROBLEM = "Write a function `add_one(x)` that returns x plus one."
ANSWER_SOLUTION = "def add_one(x):\n    return x + 1"
ANSWER_TESTS = "assert add_one(1) == 2\nassert add_one(-1) == 0\nassert add_one(10) == 11"
SEED_FILES = {
    f"mod{i}.py": f"def f{i}(values):\n    total = {i}\n    for v in values:\n"
    f"        total += v * {i + 1}\n    return total\n"
    for i in range(8)
}


PARROT_EPOCHS = 25


def write_config(tmp_path: Path, model_dir: Path, **changes) -> Path:
    seeds = tmp_path / "seeds"
    seeds.mkdir(exist_ok=True)
    for name, text in SEED_FILES.items():
        (seeds / name).write_text(text)
    config = {
        "run_dir": str(tmp_path / "run"),
        "model": {"name": str(model_dir), "device": "cpu"},
        "seeds": {"source": str(seeds), "min_lines": 2},
        "teacher": {
            "route": "import",
            "source": "builtin:mbpp-train",
            "fields": {"seed_text": "seed_text"},
            "limit": 4,
        },
        "synthesis": {"n": 2, "temperature": 0.0, "max_new_tokens": 120, "chunk_size": 2},
        "score": {"judge": {"name": str(model_dir), "device": "cpu"}, "max_new_tokens": 80},
        "train": {
            "epochs": 2,
            "batch_size": 2,
            "learning_rate": 1e-5,
            "max_length": 4096,
            "lora_targets": ["q_proj", "v_proj"],
        },
        "select": {"k": 2, "projection_dim": 64},
        "decontaminate": {"near_duplicates": False},
        "loop": {"rounds": 1, "seeds_per_round": 3, "dp_heldout": 1},
        "final": {"samples": 2, "score": True},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            config.setdefault(section, {})[field] = value
        else:
            config[section] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train_parrot(tiny_model_dir: Path, path: Path) -> Path:
    """The tiny random model, trained until it answers every synthesis prompt with one valid
    sample and every judge prompt with one valid set of scores: a stand-in for a real model
    whose outputs parse, execute and score, at a thousandth of its cost."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from scoder.config import ScoreConfig
    from scoder.templates import JUDGE_TEMPLATES, OSS_INSTRUCT_V1

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    answer = OSS_INSTRUCT_V1.answer(ANSWER_PROBLEM, ANSWER_SOLUTION, ANSWER_TESTS)
    answer = answer.removeprefix(OSS_INSTRUCT_V1.response_prefix)
    aspects = [(a.name, a.description) for a in ScoreConfig().aspects]
    scores = ", ".join(f'"{name}": {7 - i % 3}' for i, (name, _) in enumerate(aspects))
    judge_answer = scores + "}"  # after the "{" the judge's answer is forced to open with
    pairs = []
    for text in list(SEED_FILES.values())[:4]:
        chat = OSS_INSTRUCT_V1.chat(text, prefill=True)
        pairs.append((chat, answer))
        judge = JUDGE_TEMPLATES["judge-v2"].chat(
            aspects, ANSWER_PROBLEM, ANSWER_SOLUTION, ANSWER_TESTS, text
        )
        pairs.append(([*judge, {"role": "assistant", "content": "{"}], judge_answer))
    batch = []
    for chat, target in pairs:
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
        ids = tokenizer(prompt + target + tokenizer.eos_token)["input_ids"]
        start = len(tokenizer(prompt)["input_ids"])
        batch.append((torch.tensor([ids]), start))
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(PARROT_EPOCHS):
        for ids, start in batch:
            labels = ids.clone()
            labels[:, :start] = -100
            loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
