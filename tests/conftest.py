"""Shared fixtures: a tiny random model with a real (small) tokenizer, built offline in seconds."""

from __future__ import annotations

import os
import socket
import sys
from importlib import resources
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO / "bench"))  # the servers on loopback that benchmarks use too

from servers import scoder_serve, transformers_serve  # noqa: E402

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "{% if not (loop.last and message['role'] == 'assistant') %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(
    path: Path, *, vocab_size: int = 400, seed: int = 0, chat_template: bool = True
) -> Path:
    """A 2-layer Llama with random weights and a byte-level BPE tokenizer trained on a few lines
    (with a ChatML chat template like an instruct model, or without one like a base model)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|im_end|>", "<|im_start|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "def add(a, b):\n    return a + b\n",
        "### Problem\nWrite a function.\n### Solution\n```python\nx = 1\n```\n### Tests\nassert x == 1\n",
        "You are an expert Python teacher. Here is a code snippet for inspiration.",
    ] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>", bos_token=None
    )
    if chat_template:
        fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=fast.vocab_size if hasattr(fast, "vocab_size") else len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


def make_candidate(**fields):
    """A Candidate record with placeholder provenance; tests set what they are about."""
    from scoder.records import Candidate, SeedSource

    defaults = dict(
        id="c0",
        seed_id="s0",
        seed_text="def f(): pass",
        seed_source=SeedSource(kind="dir", location="x.py"),
        model="m",
        model_digest="sha256:0",
        template="oss-instruct-v1",
        template_digest="sha256:1",
        sampling={},
        raw_output="",
        prompt_tokens=1,
        completion_tokens=1,
        finish_reason="stop",
        problem="p",
        solution="def f(): pass",
        tests="assert f() is None",
    )
    return Candidate(**{**defaults, **fields})


@pytest.fixture(scope="session")
def dp_file(tmp_path_factory):
    """Six D_p rows of the shipped MBPP-train sample: a training's data."""
    rows = (resources.files("scoder") / "data" / "dp_mbpp_train.jsonl").read_text().splitlines()[:6]
    path = tmp_path_factory.mktemp("dp") / "dp.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_base_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-base-model"), chat_template=False)


@pytest.fixture(scope="session", autouse=True)
def scoder_cache(tmp_path_factory) -> Path:
    """The model cache and digest cache of the test session: a fresh one, never the user's."""
    path = tmp_path_factory.mktemp("scoder-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCODER_CACHE", str(path))
        yield path


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    attempts: list = []

    def refuse(self, address, *args, **kwargs):
        if isinstance(address, str) or (
            isinstance(address, tuple)
            and address
            and address[0] in ("127.0.0.1", "::1", "localhost")
        ):
            return real_connect(self, address, *args, **kwargs)  # local IPC is fine
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


@pytest.fixture(scope="session")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"]),
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # far from the base model, so outputs differ
    path = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def server(tiny_model_dir, adapter_dir):
    """`scoder serve` over the tiny model, with one adapter served as `ckpt1`."""
    with scoder_serve(str(tiny_model_dir), "tiny", "--adapter", f"ckpt1={adapter_dir}") as served:
        yield served[0]


@pytest.fixture(scope="session")
def transformers_server(tiny_model_dir):
    """`transformers serve` (shipped with transformers) pinned to the tiny model: a server that
    answers 422 to fields it does not know and ignores n, logprobs and response_format. Yields
    (base_url, the model id it lists: the directory it was given)."""
    with transformers_serve(str(tiny_model_dir)) as served:
        yield served


@pytest.fixture(scope="session")
def parrot_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny random model, trained until it answers every synthesis prompt with one valid
    sample and every judge prompt with one valid set of scores: a stand-in for a real model
    whose outputs parse, execute and score, at a thousandth of its cost."""
    from loop_helpers import train_parrot

    return train_parrot(tiny_model_dir, tmp_path_factory.mktemp("parrot"))
