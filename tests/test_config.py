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
    assert demo.seeds.source == "stdlib" and demo.loop.rounds == 1
    assert demo.teacher.source == "builtin:mbpp-train" and demo.train.epochs == 2  # M = 2


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
