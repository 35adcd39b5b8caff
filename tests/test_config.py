"""Config validation: every mistake names the field and what is allowed."""

from __future__ import annotations

import pytest

from scoder.config import ConfigError, load_config

REPO_CONFIGS = __import__("pathlib").Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_demo_config_validate():
    assert load_config().model.name is None
    demo = load_config(REPO_CONFIGS / "demo.yaml")
    assert demo.seeds.source == "builtin:mbpp-train" and demo.loop.rounds == 1
    assert demo.teacher.source == "builtin:mbpp-train"
    assert demo.train.epochs == 1 and demo.train.save_every_steps == 1  # 2 steps: M = 2
    # a code model that judges itself, on seeds it can write tests for, behind the execution gate
    assert demo.model.name == demo.score.judge.name == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    assert demo.seeds.pure_functions and demo.score.require_pass and demo.final.score
    assert demo.loop.seeds_per_round >= 8 and demo.final.samples >= 8 and demo.final.n == 2


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("seeds:\n  max_line: 10\n", ["seeds.max_line", "unknown key", "did you mean 'max_lines'"]),
        ("synthesis:\n  temprature: 0.5\n", ["synthesis.temprature", "did you mean 'temperature'"]),
        ("modle:\n  name: x\n", ["modle", "unknown key", "allowed here:", "model"]),
        (
            "model:\n  dtype: fp8\n",
            ["model.dtype", "'auto', 'float32', 'bfloat16' or 'float16'", "'fp8'"],
        ),
        ("model:\n  device: tpu\n", ["model.device", "auto, cpu, cuda, cuda:N"]),
        ("synthesis:\n  n: 0\n", ["synthesis.n", "greater than or equal to 1"]),
        ("synthesis:\n  top_p: 2\n", ["synthesis.top_p", "less than or equal to 1"]),
        (
            "synthesis:\n  template: nope\n",
            ["synthesis.template", "unknown template 'nope'", "oss-instruct-v1"],
        ),
        ("seeds:\n  unit: file\n", ["seeds.unit", "'definition' or 'whole'"]),
        ("seeds: [1, 2]\n", ["seeds", "valid dictionary"]),
    ],
)
def test_bad_config_names_field_and_allowed_values(tmp_path, yaml_text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, yaml_text))
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, message


def test_not_yaml_and_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "seeds: [\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_set_overrides_are_typed_and_validated(tmp_path):
    cfg = load_config(
        write(tmp_path, "synthesis:\n  n: 2\n"),
        [
            "synthesis.n=5",
            "synthesis.temperature=0",
            "model.name=/models/x",
            "seeds.max_seeds=null",
        ],
    )
    assert cfg.synthesis.n == 5
    assert cfg.synthesis.temperature == 0.0
    assert cfg.model.name == "/models/x"
    assert cfg.seeds.max_seeds is None
    with pytest.raises(ConfigError, match="synthesis.n: Input should be a valid integer"):
        load_config(None, ["synthesis.n=many"])
    with pytest.raises(ConfigError, match="expects KEY=VALUE"):
        load_config(None, ["synthesis.n"])
    with pytest.raises(ConfigError, match="random_seed: Input should be a valid integer"):
        load_config(None, ["random_seed.x=1"])
    with pytest.raises(ConfigError, match="synthesis.nn: unknown key"):
        load_config(None, ["synthesis.nn=1"])


def test_the_paper_recipe_is_one_config():
    """configs/paper.yaml: every model in its own section, the code model with its own training,
    the paper's scale; it validates without downloading anything."""
    paper = load_config(REPO_CONFIGS / "paper.yaml")
    assert paper.model.name == "Qwen/Qwen2.5-Coder-7B-Instruct" and paper.train.lora
    assert paper.model.backend == "openai" and paper.model.lora_adapters == "load"
    assert paper.teacher.route == "generate" and paper.teacher.limit == 10_000
    assert paper.teacher.model.api_key_env and paper.score.judge.backend == "openai"
    assert paper.loop.checkpoints == paper.train.epochs == 3 and paper.synthesis.n == 4
    assert paper.final.samples == 60_000
    code = paper.code_model
    assert code.enabled and code.model.name == "deepseek-ai/deepseek-coder-6.7b-base"
    assert not code.train.lora and code.eval_prompt == "sft"
    assert set(code.eval_benchmarks) == {"humaneval", "mbppplus"}


@pytest.mark.parametrize(
    ("sets", "expected"),
    [
        (["train.lora=false"], "a full fine-tune is for the code model"),
        (["loop.checkpoints=3", "train.epochs=2"], "makes 2 checkpoint(s)"),
        (["code_model.eval_benchmarks=[humaneval]"], "set enabled: true"),
        (["final.code_model=true"], "no longer a config key: set code_model.enabled"),
        (["train.data=x.jsonl"], "scoder train --data FILE"),
    ],
)
def test_what_a_run_cannot_do_is_refused_at_load(sets, expected):
    with pytest.raises(ConfigError, match=__import__("re").escape(expected)):
        load_config(None, sets)
