"""Where the parallel work of a stage runs: here (the default) or on a Ray cluster.

An executor maps a module-level function over shards of records and gives the results back in
shard order; it decides nothing about what is computed. So it is not part of any step's
fingerprint (a run moved to Ray reuses what it made locally, and the other way round), and a stage
reads it from the process (`current()`), set once by the command line (`activate`) like the
progress display, instead of taking it as an argument through every step.

- ``local`` (`None` from `current()`): each stage's own pool in this process, as before.
- ``ray``: `scoder.executors.ray_cluster.RayExecutor`, the optional extra `scoder[ray]`.

The stages that use it: sandbox execution (`scoder.sandbox.run_many`: CPU tasks over shards of
programs, one sandbox at a time each) and the gradient features of `select` (one task per
checkpoint shard, on a GPU when the cluster has them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from scoder.config_scale import ExecutorConfig
from scoder.executors.ray_cluster import RayExecutor

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    kind: str
    cpus: int  # CPUs it can run tasks on, all nodes together
    gpus: int
    generation_actors: int  # in-process generation: this many actors (0: here)

    def map(
        self,
        fn: Callable[[T], R],
        shards: Sequence[T],
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        on_done: Callable[[int], None] | None = None,
    ) -> list[R]:
        """`fn(shard)` for every shard, as tasks; results in shard order. A task whose worker
        died is run again (so `fn` must be safe to repeat); `on_done(i)` as shard i finishes."""
        ...

    def actors(self, cls: type, count: int, *args: Any, num_gpus: float = 0) -> list[Any]:
        """`count` long-lived workers of `cls(*args)` (restarted if their process dies)."""
        ...

    def call(self, refs: Sequence[Any]) -> list[Any]:
        """The results of calls made on actors (`actor.method.remote(...)`), in order."""
        ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


_ACTIVE: list[Executor | None] = []  # None: in this process


def current() -> Executor | None:
    """The executor the command line activated; None = the stage's own pool in this process."""
    return _ACTIVE[-1] if _ACTIVE else None


def make_executor(config: ExecutorConfig) -> Executor | None:
    if config.kind == "local":
        return None
    return RayExecutor(config)


@contextmanager
def activate(config: ExecutorConfig) -> Iterator[Executor | None]:
    """Run the enclosed stages on the executor `config` names (nothing to do for local)."""
    executor = make_executor(config)
    if executor is None:
        yield None
        return
    _ACTIVE.append(executor)
    try:
        yield executor
    finally:
        _ACTIVE.remove(executor)
        executor.close()


@contextmanager
def here() -> Iterator[None]:
    """The enclosed stages run in this process, whatever executor is active (to compare them)."""
    _ACTIVE.append(None)
    try:
        yield
    finally:
        _ACTIVE.pop()


def shards_of(
    items: Sequence[T], executor: Executor, *, per_cpu: int = 4, most: int = 64
) -> list[list[T]]:
    """`items` in contiguous shards: about `per_cpu` shards per CPU of the cluster (so a slow
    shard or a lost worker costs little), at most `most` items each."""
    if not items:
        return []
    size = max(1, min(most, -(-len(items) // (per_cpu * max(1, executor.cpus)))))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
