"""One OpenAI backend over several endpoints: real `scoder serve` processes (and, for failures
the real servers do not make on demand, the fault-injecting server of test_openai_faults)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from servers import free_port
from test_openai_faults import FlakyAPI, completion
from test_serve import post, served_models

from scoder.config import ConfigError, ModelConfig, load_config
from scoder.errors import ScoderError
from scoder.models import SamplingParams
from scoder.models.endpoints import EndpointPool, NoEndpointLeft
from scoder.models.openai_backend import OpenAIBackend

CHATS = [[{"role": "user", "content": f"Write function number {i}."}] for i in range(8)]
GREEDY = SamplingParams(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def second_server(tiny_model_dir):
    """A second `scoder serve` of the tiny model as "tiny" (the process and its base URL); the
    last test of the module kills it."""
    port = free_port()
    command = [sys.executable, "-m", "scoder.cli", "serve", "--model", str(tiny_model_dir),
               "--port", str(port), "--served-model-name", "tiny", "--device", "cpu"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, "scoder serve died"
            try:
                with urllib.request.urlopen(url + "/models", timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "scoder serve did not start"
                time.sleep(0.2)
        yield proc, url
    finally:
        proc.kill()
        proc.wait(60)


@pytest.fixture
def second(second_server) -> str:
    proc, url = second_server
    assert proc.poll() is None, "the second server was killed: the test that kills it runs last"
    return url


@pytest.fixture(scope="module")
def reference(server) -> list[str]:
    """The CHATS through the one session server: what any number of endpoints must give."""
    return texts(OpenAIBackend(base_url=server, model="tiny").generate(CHATS, 1, GREEDY))


def texts(outputs) -> list[str]:
    return [c.text for completions in outputs for c in completions]


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


def test_two_endpoints_generate_what_one_does_and_share_the_requests(server, second, reference):
    backend = OpenAIBackend(base_url=[server, second], model="tiny")
    assert texts(backend.generate(CHATS, 1, GREEDY)) == reference  # in input order
    spread = dict(backend.usage["per_endpoint"])
    assert set(spread) == {server, second} and min(spread.values()) > 0
    assert sum(spread.values()) == backend.usage["requests"] == len(CHATS)
    info = backend.describe()
    assert info["usage"]["per_endpoint"] == spread and "endpoints_down" not in info
    assert "endpoint_failures" not in info["usage"]
    # one at a time (nothing in flight at each choice): still both, in turn
    for chat in CHATS[:2]:
        backend.generate([chat], 1, GREEDY)
    assert backend.usage["per_endpoint"] == {url: n + 1 for url, n in spread.items()}


def test_identity_keeps_one_url_and_ignores_the_order_of_several():
    apis = [FlakyAPI(lambda i, body: (200, completion(), {})) for _ in range(2)]
    try:
        a, b = (api.url for api in apis)
        one = OpenAIBackend(base_url=a, model="m").describe()
        today = "api:" + hashlib.sha256(f"{a}|m".encode()).hexdigest()[:16]
        assert one["digest"] == today and one["base_url"] == a  # runs made before resume
        assert OpenAIBackend(base_url=[a], model="m").describe()["digest"] == today
        ab = OpenAIBackend(base_url=[a, b], model="m").describe()
        ba = OpenAIBackend(base_url=[b, a], model="m").describe()
        assert ab["digest"] == ba["digest"] != today and ab["base_url"] == sorted([a, b])
    finally:
        for api in apis:
            api.close()


def test_endpoint_down_from_the_start_is_reported_and_the_live_one_works(server, reference, capsys):
    dead = dead_url()
    backend = OpenAIBackend(base_url=[dead, server], model="tiny", max_retries=0)
    assert f"cannot reach the OpenAI-compatible server at {dead}" in capsys.readouterr().err
    assert texts(backend.generate(CHATS, 1, GREEDY)) == reference
    assert backend.usage["per_endpoint"] == {dead: 0, server: len(CHATS)}
    info = backend.describe()
    assert info["usage"]["endpoint_failures"] == {dead: 1} and dead in info["endpoints_down"]
    # down for no time at all: each request tries the dead one again, fails over, and finishes
    retried = OpenAIBackend(base_url=[dead, server], model="tiny", max_retries=0, down_for_s=0)
    assert texts(retried.generate(CHATS, 1, GREEDY)) == reference
    assert retried.usage["endpoint_failures"][dead] > 1
    assert f"lost the server at {dead}" in capsys.readouterr().err


def test_every_endpoint_down_is_one_clear_error_and_keeps_what_finished(tmp_path):
    def first_only(i, body):  # the request with seed 0 is answered, then the server fails
        if body["seed"] == 0:
            return 200, completion(), {}
        return 503, {"error": {"message": "overloaded"}}, {}

    apis = [FlakyAPI(first_only), FlakyAPI(first_only)]
    try:
        urls = [api.url for api in apis]
        backend = OpenAIBackend(base_url=urls, model="m", max_retries=0, max_concurrency=1)
        backend.use_request_log(tmp_path / "requests.jsonl")
        with pytest.raises(ScoderError) as caught:
            backend.generate(CHATS[:4], 1, SamplingParams(max_new_tokens=8, seed=0))
        message = str(caught.value)
        assert message.startswith("every endpoint is down")
        assert all(f"the server at {url} answered 503" in message for url in urls)
        assert message.endswith("finished requests are kept, run again to resume")
        assert len((tmp_path / "requests.jsonl").read_text().splitlines()) == 1
        assert backend.usage["endpoint_failures"] == dict.fromkeys(urls, 1)
    finally:
        for api in apis:
            api.close()
    with pytest.raises(ScoderError, match="every endpoint is down: cannot reach .*; cannot reach"):
        OpenAIBackend(base_url=[dead_url(), dead_url()], model="m", max_retries=0)


def test_adapters_are_registered_and_served_on_every_endpoint(server, second, adapter_dir):
    backend = OpenAIBackend(base_url=[server, second], model="tiny")
    backend.load_adapters({"pool1": adapter_dir})
    served = backend.adapters["pool1"]
    try:
        assert served in served_models(server) and served in served_models(second)
        with backend.adapter("pool1"):
            tuned = backend.generate(CHATS, 1, GREEDY)
        assert min(backend.usage["per_endpoint"].values()) > 0
        alone = OpenAIBackend(base_url=server, model=served).generate(CHATS, 1, GREEDY)
        assert texts(tuned) == texts(alone)
    finally:
        for url in (server, second):  # the session server is shared: leave it as it was
            post(url + "/unload_lora_adapter", {"lora_name": served})
    # preloaded: every endpoint must serve the checkpoint (the session server has ckpt1)
    preloaded = OpenAIBackend(base_url=[server, second], model="tiny", lora_adapters="preloaded")
    with pytest.raises(ScoderError, match=f"the server at {second} does not serve .*ckpt1"):
        preloaded.load_adapters({"ckpt1": adapter_dir})


def test_pool_takes_the_least_busy_endpoint_in_turn_and_waits_when_all_are_full():
    async def scenario() -> list:
        pool = EndpointPool(["http://a/v1", "http://b/v1"], max_concurrency=2)
        pool.start()
        first = [(await pool.acquire()).index for _ in range(4)]
        waiting = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        blocked = not waiting.done()  # each endpoint has its 2 in flight
        pool.release(pool.endpoints[1])
        freed = (await waiting).index  # the first slot that frees, on any endpoint
        pool.release(pool.endpoints[0])
        pool.release(pool.endpoints[0])
        pool.release(pool.endpoints[1])
        pool.release(pool.endpoints[1])
        alone = []  # nothing in flight at each choice: ties go round
        for _ in range(3):
            endpoint = await pool.acquire()
            alone.append(endpoint.index)
            pool.release(endpoint)
        pool.mark_down(pool.endpoints[0], "lost a")
        after = (await pool.acquire()).index
        try:
            await pool.acquire(exclude=[1])
            left = "something"
        except NoEndpointLeft:
            left = "nothing"
        return [first, blocked, freed, alone, after, left]

    assert asyncio.run(scenario()) == [[0, 1, 0, 1], True, 1, [0, 1, 0], 1, "nothing"]


def test_config_takes_a_list_of_endpoints():
    a, b = "http://a:8000/v1", "http://b:8000/v1"
    cfg = ModelConfig(backend="openai", name="m", base_url=[b, a])
    assert cfg.base_url == [a, b]  # a set: sorted, so the order is in no fingerprint
    assert ModelConfig(backend="openai", name="m", base_url=[a]).base_url == a  # as one URL
    overridden = load_config(
        None, ["model.backend=openai", "model.name=m", f"model.base_url=[{b}, {a}]"]
    )
    assert overridden.model.base_url == [a, b]
    for value, why in [
        ([], "at least one endpoint"),
        ([a, a + "/"], f"lists the endpoint\\(s\\) {a} more than once"),
        ([a, "ftp://b/v1"], "'ftp://b/v1' is not an http\\(s\\) URL"),
        ("localhost:8000/v1", "is not an http\\(s\\) URL"),
    ]:
        with pytest.raises(ConfigError, match=f"model.base_url: .*{why}"):
            load_config(
                None,
                ["model.backend=openai", "model.name=m", f"model.base_url={json.dumps(value)}"],
            )


def test_server_killed_mid_run_loses_and_repeats_nothing(server, second_server, tmp_path):
    # last in the module: it kills the second server
    proc, doomed = second_server
    log = tmp_path / "requests.jsonl"
    backend = OpenAIBackend(
        base_url=[doomed, server], model="tiny", max_retries=1, max_concurrency=2
    )
    backend.use_request_log(log)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    chats = CHATS + [[{"role": "user", "content": f"And a class {i}."}] for i in range(8)]
    got: list = []
    worker = threading.Thread(target=lambda: got.append(backend.generate(chats, 1, params)))
    worker.start()
    deadline = time.time() + 60
    while not (log.is_file() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.01)
    proc.kill()  # a crash, with requests in flight and queued on it
    worker.join(120)
    assert got, "the generation did not finish"
    keys = [json.loads(line)["key"] for line in log.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(chats)  # each request once, none lost
    alone = OpenAIBackend(base_url=server, model="tiny").generate(chats, 1, params)
    assert texts(got[0]) == texts(alone)  # every chat, in input order
    assert backend.usage["endpoint_failures"] == {doomed: 1}
    assert backend.usage["per_endpoint"][server] > 0
    assert sum(backend.usage["per_endpoint"].values()) == len(chats)
