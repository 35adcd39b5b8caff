"""The Ray executor on a local 2-CPU cluster: the same results as the local executor, a killed
worker's shard retried without duplicates or gaps, gradient features computed by the workers."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_select import train_checkpoints, write_inputs

from scoder import executors
from scoder.config import ExecutorConfig, load_config
from scoder.errors import ScoderError
from scoder.models import SamplingParams, TransformersBackend, load_backend, resolve_model
from scoder.models.ray_backend import RayGenerationBackend
from scoder.sandbox import run_many
from scoder.select import run_select

pytest.importorskip("ray")


# first: with a cluster started in this process, Ray would not look at another address
def test_an_unreachable_cluster_is_one_clear_error():
    with (
        pytest.raises(ScoderError, match="cannot start Ray on 127.0.0.1:1"),
        executors.activate(ExecutorConfig(kind="ray", address="127.0.0.1:1")),
    ):
        pass


@pytest.fixture(scope="module")
def cluster():
    config = ExecutorConfig(kind="ray", num_cpus=2, generation_actors=2)
    with executors.activate(config) as executor:
        yield executor


def programs(n: int, sleep_s: float = 0.0) -> list[tuple[str, str]]:
    """Program i passes iff i is even, and its failure names i: a result in the wrong place, a
    lost one or a doubled one cannot go unseen."""
    code = "import time\ntime.sleep({s})\ndef f():\n    return {i}\n"
    tests = "assert f() == {i}\nassert f() % 2 == 0, 'odd {i}'\n"
    return [(code.format(s=sleep_s, i=i), tests.format(i=i)) for i in range(n)]


def summary(results):
    return [(r.status, r.tests_total, r.tests_passed, r.isolation, r.detail) for r in results]


def test_sandbox_on_ray_equals_the_local_pool(cluster):
    work = programs(24)
    assert executors.current() is cluster and cluster.cpus == 2
    on_ray = run_many(work)
    with executors.here():  # the same programs on this process's own pool
        local = run_many(work)
    assert summary(on_ray) == summary(local)
    assert [r.status for r in on_ray] == ["passed", "failed"] * 12
    assert all(f"odd {i}" in r.detail for i, r in enumerate(on_ray) if i % 2)


def _pids_running(title: bytes) -> list[int]:
    """Pids of Ray workers busy with `title` now (Ray titles a worker by its task or actor)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and title in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_worker_killed_mid_shard_is_retried_without_duplicates_or_gaps(cluster):
    work = programs(16, sleep_s=0.4)  # 8 shards of 2: about 0.8 s each
    results: list = []
    runner = threading.Thread(target=lambda: results.extend(run_many(work)))
    runner.start()
    killed, deadline = None, time.time() + 60
    while killed is None and time.time() < deadline:
        busy = _pids_running(b"ray::_run_shard")
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed = busy[0]
        time.sleep(0.05)
    runner.join(timeout=120)
    assert killed is not None, "no Ray worker was seen running a shard"
    assert not runner.is_alive()
    assert len(results) == len(work)
    assert [r.status for r in results] == ["passed", "failed"] * 8
    assert all(f"odd {i}" in r.detail for i, r in enumerate(results) if i % 2)


def test_gradient_features_by_the_workers_equal_the_local_ones(cluster, tmp_path, tiny_model_dir):
    checkpoints = train_checkpoints(tiny_model_dir, tmp_path / "ckpts", steps=(6,))
    cands, dp = write_inputs(tmp_path)
    common = [
        f"model.name={tiny_model_dir}",
        "model.device=cpu",
        "select.k=2",
        "select.projection_dim=128",
    ]
    run, on_ray = run_select(
        load_config(None, [f"run_dir={tmp_path / 'ray'}", *common]),
        cands,
        dp=dp,
        checkpoints=checkpoints,
    )
    # every feature was made by a worker: this process found them all in the store
    assert run.load_manifest()["stages"]["select"]["counts"]["features_reused"] == 6 + 3
    with executors.here():
        local = run_select(
            load_config(None, [f"run_dir={tmp_path / 'local'}", *common]),
            cands,
            dp=dp,
            checkpoints=checkpoints,
        )[1]
    assert [c.id for c in on_ray.kept] == [c.id for c in local.kept]
    # workers batch other samples together: the same features up to float rounding
    assert [c.influence for c in on_ray.kept] == pytest.approx(
        [c.influence for c in local.kept], rel=1e-5
    )


def test_executor_config_is_checked():
    with pytest.raises(ScoderError, match="executor.kind"):
        load_config(None, ["executor.kind=slurm"])
    assert load_config(None, []).executor.kind == "local"


CHATS = [
    [{"role": "user", "content": f"Write a function that adds {i} to x."}] for i in range(5)
] + [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "def"}]]


def _texts(outputs):
    return [[c.text for c in row] for row in outputs]


def test_in_process_generation_on_actors_equals_one_process(cluster, tiny_model_dir, adapter_dir):
    model = load_config(
        None, [f"model.name={tiny_model_dir}", "model.device=cpu", "model.batch_size=2"]
    ).model
    here = TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu", batch_size=2)
    on_ray = load_backend(model)
    assert isinstance(on_ray, RayGenerationBackend) and on_ray.describe()["ray_actors"] == 2
    assert on_ray.describe()["digest"] == here.describe()["digest"]  # the same identity
    sampled = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.95, seed=3)
    greedy = SamplingParams(max_new_tokens=8, temperature=0.0, seed=0)
    for params in (sampled, greedy):  # 12 rows in 6 batches of 2, 3 to each actor
        assert _texts(on_ray.generate(CHATS, 2, params)) == _texts(here.generate(CHATS, 2, params))
    for backend in (here, on_ray):
        backend.load_adapters({"tuned": adapter_dir})
    with here.adapter("tuned"):
        expected = _texts(here.generate(CHATS, 1, sampled))
    with on_ray.adapter("tuned"):
        assert _texts(on_ray.generate(CHATS, 1, sampled)) == expected
    steps = [("Score: ", [str(d) for d in range(10)])]
    with here.adapter(None), on_ray.adapter(None):  # the base model again, on both
        ours = on_ray.choice_probabilities(CHATS, steps)
        theirs = here.choice_probabilities(CHATS, steps)
    assert [[sorted(s) for s in row] for row in ours] == [
        [sorted(s) for s in row] for row in theirs
    ]
    for row_a, row_b in zip(ours, theirs):
        for a, b in zip(row_a, row_b):
            assert a == pytest.approx(b, abs=1e-6)
    # an actor killed between calls is restarted (its adapter loaded again): the same rows
    os.kill(_pids_running(b"ray::GenerationActor")[0], signal.SIGKILL)
    with on_ray.adapter("tuned"):
        assert _texts(on_ray.generate(CHATS, 1, sampled)) == expected
