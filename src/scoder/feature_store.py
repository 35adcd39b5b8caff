"""A store of per-sample features (gradient features, RDS+ embeddings) in a run directory:
numpy arrays keyed by a hash of each sample's token ids, saved a chunk at a time as they are
computed, reused wherever the same tokens meet the same checkpoint and spec again."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from scoder.influence import Example
from scoder.progress import track
from scoder.store import atomic_write_bytes


def _token_key(example: Example) -> str:
    blob = json.dumps([example.prompt_ids, example.response_ids]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def cached_features(
    store: Path,
    examples: list[Example],
    compute: Callable[[list[Example]], np.ndarray],
    *,
    chunk_rows: int = 256,
    tag: str = "part",
    description: str = "gradient features",
) -> tuple[np.ndarray, int]:
    """Features for examples, computing only those whose tokens no part file in `store` holds.

    The missing examples are computed `chunk_rows` at a time, in order, and each chunk is saved
    as it finishes (`<tag>-<hash>.npy` + `.json` index, the index written last), so a killed run
    loses at most one chunk and its resumption computes the same chunks as an uninterrupted run;
    parts from shards run elsewhere can simply be copied in. Returns the features in example
    order and how many rows were reused.
    """
    keys = [_token_key(ex) for ex in examples]
    known: dict[str, tuple[np.ndarray, int]] = {}
    for index_file in sorted(store.glob("*.json")):
        array_file = index_file.with_suffix(".npy")
        if index_file.name == "spec.json" or not array_file.is_file():
            continue
        array = np.load(array_file, mmap_mode="r")
        for row, key in enumerate(json.loads(index_file.read_text())):
            known.setdefault(key, (array, row))
    reused = sum(1 for k in keys if k in known)
    position = {}
    for i, k in enumerate(keys):
        if k not in known:
            position.setdefault(k, i)
    missing = list(position)
    if missing:
        with track(description, total=len(missing), unit="samples") as progress:
            for start in range(0, len(missing), chunk_rows):
                chunk = missing[start : start + chunk_rows]
                fresh = compute([examples[position[k]] for k in chunk]).astype(np.float32)
                save_part(store, tag, chunk, fresh)
                for row, key in enumerate(chunk):
                    known[key] = (fresh, row)
                progress.advance(len(chunk))
    if not keys:
        return np.empty((0, 0), np.float32), 0
    rows = [np.asarray(known[k][0][known[k][1]]) for k in keys]
    return np.vstack(rows).astype(np.float32), reused


def save_part(store: Path, tag: str, keys: list[str], features: np.ndarray) -> Path:
    """One chunk of features and its index (written last: an index names a complete array)."""
    part = store / f"{tag}-{hashlib.sha256(''.join(keys).encode()).hexdigest()[:12]}"
    buffer = io.BytesIO()
    np.save(buffer, features)
    atomic_write_bytes(part.with_suffix(".npy"), buffer.getvalue())
    atomic_write_bytes(part.with_suffix(".json"), json.dumps(keys).encode())
    return part
