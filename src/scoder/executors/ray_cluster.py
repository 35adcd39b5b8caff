"""The Ray executor: a stage's shards as Ray tasks on a cluster (or a local one started here).

Ray is imported when an executor is made, so scoder without the `ray` extra never needs it.
Outputs equal the local executor's because a task is a pure function of its shard and results
are placed by shard index: a worker killed mid-shard makes Ray run that task again (up to
`max_retries`), and since nothing of the first try is kept, there are no duplicates and no gaps.
What a stage has finished lives in the run directory as before (its chunks), so a Ray job that
dies resumes from the same place.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from scoder.config_scale import ExecutorConfig
from scoder.errors import ScoderError
from scoder.progress import LOG

T = TypeVar("T")
R = TypeVar("R")


def _check_reachable(address: str) -> None:
    """Ray waits minutes for a head that is not there, then exits the process: ask first."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except ValueError:
        raise ScoderError(
            f"executor.address {address!r} is not HOST:PORT, ray://HOST:PORT or auto"
        ) from None
    except OSError as exc:
        raise ScoderError(
            f"cannot start Ray on {address}: no Ray head answers there ({exc})"
        ) from None


class RayExecutor:
    kind = "ray"

    def __init__(self, config: ExecutorConfig):
        try:
            import ray
        except ImportError:
            raise ScoderError(
                "executor.kind is ray, but Ray is not installed: pip install 'scoder[ray]'"
            ) from None
        self._ray = ray
        self.config = config
        self._started = not ray.is_initialized()
        if self._started and config.address not in (None, "auto"):
            _check_reachable(config.address)
        if self._started:
            # Ray prints its own banners and worker logs; scoder's log says what matters.
            os.environ.setdefault("RAY_DEDUP_LOGS", "0")
            try:
                ray.init(
                    address=config.address,
                    num_cpus=config.num_cpus if config.address is None else None,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="ERROR",
                    configure_logging=True,
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = config.address or "a local cluster"
                raise ScoderError(f"cannot start Ray on {where}: {exc}") from None
        resources = ray.cluster_resources()
        self.cpus = int(resources.get("CPU", 1))
        self.gpus = int(resources.get("GPU", 0))
        self.nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        wanted = config.generation_actors
        self.generation_actors = self.gpus if wanted is None else wanted
        LOG.info("parallel stages run on Ray: %s", self.describe())

    def map(
        self,
        fn: Callable[[T], R],
        shards: Sequence[T],
        *,
        num_cpus: float = 1,
        num_gpus: float = 0,
        on_done: Callable[[int], None] | None = None,
    ) -> list[R]:
        ray = self._ray
        task = ray.remote(
            num_cpus=num_cpus, num_gpus=num_gpus, max_retries=self.config.max_retries
        )(fn)
        refs = [task.remote(shard) for shard in shards]
        where = {ref: i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(refs)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    results[where[ref]] = self._result(ref, fn.__name__)
                    if on_done is not None:
                        on_done(where[ref])
        except BaseException:
            for ref in pending:  # Ctrl-C or a failed shard: stop the rest at once
                ray.cancel(ref, force=True)
            raise
        return results

    def actors(self, cls: type, count: int, *args: Any, num_gpus: float = 0) -> list[Any]:
        """`count` actors of `cls(*args)`; one whose process dies is restarted and its call run
        again. They take no CPU of the cluster's (tasks of other stages are not kept waiting):
        a GPU each when `num_gpus`, else they share the CPUs while they work."""
        ray = self._ray
        make = ray.remote(
            num_cpus=0,
            num_gpus=num_gpus,
            max_restarts=self.config.max_retries,
            max_task_retries=self.config.max_retries,
        )(cls)
        return [make.remote(*args) for _ in range(count)]

    def call(self, refs: Sequence[Any]) -> list[Any]:
        """The results of actor calls, in order (their errors raised as here)."""
        return [self._result(ref, "an actor call") for ref in refs]

    def _result(self, ref: Any, what: str) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None  # the task's own error, as if run here
        except (
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ActorDiedError,
        ) as exc:
            raise ScoderError(
                f"a Ray worker running {what} died {self.config.max_retries + 1} times "
                f"({type(exc).__name__}); what the stage finished is kept, run again to resume"
            ) from None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "ray",
            "address": self.config.address,
            "cpus": self.cpus,
            "gpus": self.gpus,
            "nodes": self.nodes,
            "generation_actors": self.generation_actors,
        }

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
