"""`scoder serve` + the OpenAI backend, end to end: a real server process, the real openai client."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from servers import free_port

from scoder.errors import ScoderError
from scoder.models import SamplingParams, resolve_model
from scoder.models.hf import TransformersBackend
from scoder.models.openai_backend import OpenAIBackend

CHATS = [
    [{"role": "user", "content": "Write a function."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "### Problem\n"}],
]


def post(url: str, body: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def served_models(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/models") as r:
        return [m["id"] for m in json.load(r)["data"]]


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    """The in-process backend over the model the server serves: the reference."""
    return TransformersBackend(resolve_model(str(tiny_model_dir)), device="cpu")


def test_models_list_names_base_and_adapters(server):
    assert served_models(server) == ["tiny", "ckpt1"]


def test_openai_client_generates_through_the_server(server):
    backend = OpenAIBackend(base_url=server, model="tiny")
    out = backend.generate(
        CHATS, n=2, params=SamplingParams(temperature=1.0, max_new_tokens=8, seed=3)
    )
    assert [len(c) for c in out] == [2, 2]
    for completions in out:
        for c in completions:
            assert c.finish_reason in ("stop", "length") and c.prompt_tokens > 0
    info = backend.describe()
    assert info["usage"]["requests"] == 2 and info["usage"]["completion_tokens"] > 0
    assert info["digest"].startswith("api:")


def test_adapters_are_served_by_name(server):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    base = OpenAIBackend(base_url=server, model="tiny").generate(CHATS[:1], 1, params)
    tuned = OpenAIBackend(base_url=server, model="ckpt1").generate(CHATS[:1], 1, params)
    assert base[0][0].text != tuned[0][0].text


def offline(log):
    """A backend whose server is not there, answering from the request log `log`."""
    backend = OpenAIBackend(
        base_url=f"http://127.0.0.1:{free_port()}/v1", model="tiny", check_server=False
    )
    backend.use_request_log(log)
    return backend


def generate_then_replay(server, log, params):
    """CHATS generated through the server with a request log, then again by an offline backend
    reading that log: (first answers, the offline backend, its answers)."""
    first = OpenAIBackend(base_url=server, model="tiny")
    first.use_request_log(log)
    a = first.generate(CHATS, 1, params)
    replay = offline(log)
    return a, replay, replay.generate(CHATS, 1, params)


def test_request_log_means_a_rerun_sends_nothing(server, tmp_path):
    log = tmp_path / "requests.jsonl"
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    # the same requests against a server that is not there: answered from the log
    a, replay, b = generate_then_replay(server, log, params)
    assert [c[0].text for c in a] == [c[0].text for c in b]
    assert replay.usage["requests"] == 0 and replay.usage["cached_requests"] == 2
    log.write_text(log.read_text() + '{"key": "cut by a cra')  # a torn last line is ignored
    replay.generate(CHATS, 1, params)


def test_clear_errors(server, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ScoderError, match=f"cannot reach the OpenAI-compatible server at {dead}"):
        OpenAIBackend(base_url=dead, model="tiny")
    with pytest.raises(ScoderError, match="does not serve 'nope'.*tiny, ckpt1"):
        OpenAIBackend(base_url=server, model="nope")
    monkeypatch.delenv("SCODER_TEST_KEY", raising=False)
    with pytest.raises(ScoderError, match="SCODER_TEST_KEY.*not set"):
        OpenAIBackend(base_url=server, model="tiny", api_key_env="SCODER_TEST_KEY")
    lost = OpenAIBackend(base_url=dead, model="tiny", check_server=False, max_retries=1)
    with pytest.raises(ScoderError, match="finished requests are kept"):
        lost.generate(CHATS, 1, SamplingParams(max_new_tokens=4))


def test_synthesize_through_the_server(server, tmp_path):
    from scoder.config import load_config
    from scoder.records import Candidate
    from scoder.seeds import run_seeds
    from scoder.store import read_jsonl
    from scoder.synthesize import run_synthesize

    code = tmp_path / "code"
    code.mkdir()
    (code / "m.py").write_text(
        "def f(x):\n    y = x + 1\n    return y\n\n\ndef g(x):\n    z = x * 2\n    return z\n"
    )
    cfg = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"seeds.source={code}",
            "model.backend=openai",
            f"model.base_url={server}",
            "model.name=tiny",
            "synthesis.n=2",
            "synthesis.max_new_tokens=8",
            "model.price_per_million_tokens={prompt: 1.0, completion: 2.0}",
        ],
    )
    run_seeds(cfg)
    run, result = run_synthesize(cfg)
    out = run.stage_dir("synthesize")
    assert (
        len(read_jsonl(out / "kept.jsonl", Candidate))
        + len(read_jsonl(out / "dropped.jsonl", Candidate))
        == 4
    )
    model = run.load_manifest()["stages"]["synthesize"]["model"]
    assert (
        model["backend"] == "openai"
        and model["usage"]["requests"] == 2
        and model["usage"]["cost"] > 0
    )
    assert len((out / "requests.jsonl").read_text().splitlines()) == 2


# -- logprobs ---------------------------------------------------------------------------------


def test_logprobs_through_the_server_equal_the_in_process_backend(server, local):
    params = SamplingParams(temperature=0.0, max_new_tokens=8, logprobs=3)
    remote = OpenAIBackend(base_url=server, model="tiny").generate(CHATS, 1, params)
    expected = local.generate(CHATS, 1, params)
    for (got,), (want,) in zip(remote, expected):
        assert got.text == want.text and got.logprobs and want.logprobs
        assert len(got.logprobs) == len(want.logprobs) == got.completion_tokens
        for g, w in zip(got.logprobs, want.logprobs):
            assert g.token == w.token and abs(g.logprob - w.logprob) < 1e-4
            assert [t for t, _ in g.top] == [t for t, _ in w.top] and len(g.top) == 3
            assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(g.top, w.top))
            values = [lp for _, lp in g.top]
            assert values == sorted(values, reverse=True)
            # greedy: the chosen token is the most likely one, so it is the first alternative
            assert g.top[0][0] == g.token and abs(g.top[0][1] - g.logprob) < 1e-6


def test_logprobs_do_not_change_what_is_generated(local):
    for params in (
        SamplingParams(temperature=0.0, max_new_tokens=8),
        SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, seed=4),
    ):
        plain = local.generate(CHATS, 2, params)
        scored = local.generate(CHATS, 2, SamplingParams(**{**params.to_dict(), "logprobs": 2}))
        assert [[c.text for c in cs] for cs in plain] == [[c.text for c in cs] for cs in scored]
        assert all(c.logprobs is None for cs in plain for c in cs)
        for c in (c for cs in scored for c in cs):
            assert len(c.logprobs) == c.completion_tokens
            assert all(t.logprob <= 0 and len(t.top) == 2 for t in c.logprobs)
            if c.finish_reason == "stop":
                assert c.logprobs[-1].token == "<|im_end|>"  # up to the end token it stopped at


def test_logprobs_in_openai_shape(server):
    body = {
        "model": "tiny",
        "messages": CHATS[0],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    status, text = post(server + "/chat/completions", body)
    assert status == 200
    (choice,) = json.loads(text)["choices"]
    content = choice["logprobs"]["content"]
    assert len(content) == 4
    for entry in content:
        assert entry["bytes"] == list(entry["token"].encode())
        assert len(entry["top_logprobs"]) == 2
        assert {"token", "logprob", "bytes"} <= set(entry["top_logprobs"][0])
    # the chosen tokens alone (top_logprobs 0), none at all without logprobs, and vLLM's check
    status, text = post(server + "/chat/completions", {**body, "top_logprobs": 0})
    assert json.loads(text)["choices"][0]["logprobs"]["content"][0]["top_logprobs"] == []
    del body["logprobs"], body["top_logprobs"]
    assert json.loads(post(server + "/chat/completions", body)[1])["choices"][0]["logprobs"] is None
    status, text = post(server + "/chat/completions", {**body, "top_logprobs": 2})
    assert status == 400 and "logprobs" in text


def test_request_log_keeps_logprobs(server, tmp_path):
    log = tmp_path / "requests.jsonl"
    params = SamplingParams(temperature=0.0, max_new_tokens=4, logprobs=2)
    # capabilities from beside the log: no server needed
    a, replay, b = generate_then_replay(server, log, params)
    assert replay.usage["requests"] == 0 and replay.usage["cached_requests"] == 2
    assert [c[0].logprobs for c in a] == [c[0].logprobs for c in b] and a[0][0].logprobs


# -- trailing assistant messages, capabilities --------------------------------------------------


def test_trailing_assistant_message_is_a_new_turn_unless_continued(server):
    body = {"model": "tiny", "messages": CHATS[1], "max_tokens": 2, "temperature": 0}
    status, text = post(server + "/chat/completions", body)
    assert status == 200  # as vLLM: the assistant message is a finished turn, a new one follows
    new_turn = json.loads(text)["usage"]["prompt_tokens"]
    continued = {"continue_final_message": True}
    for flags in (continued, {**continued, "add_generation_prompt": False}):
        status, text = post(server + "/chat/completions", {**body, **flags})
        assert status == 200 and json.loads(text)["usage"]["prompt_tokens"] < new_turn
    both = {"continue_final_message": True, "add_generation_prompt": True}
    assert post(server + "/chat/completions", {**body, **both})[0] == 400
    user_last = {**body, "messages": CHATS[0], "continue_final_message": True}
    assert post(server + "/chat/completions", user_last)[0] == 400


def test_capabilities_of_scoder_serve(server):
    backend = OpenAIBackend(base_url=server, model="tiny")
    caps = backend.capabilities()
    assert (caps.continuation, caps.logprobs, caps.json_schema) == (True, True, False)
    assert "prompt tokens" in caps.how
    assert backend.capabilities() is not None and backend.usage["requests"] == 0
    # response_format is accepted (and ignored): json_schema is then simply not sent
    out = backend.generate(
        CHATS[:1], 2, SamplingParams(max_new_tokens=4, json_schema={"type": "object"})
    )
    assert len(out[0]) == 2
    info = backend.describe()["capabilities"]
    assert info["continuation"] and info["logprobs"] and not info["json_schema"] and info["n"]
    body = {"model": "tiny", "messages": CHATS[0], "max_tokens": 2}
    assert (
        post(server + "/chat/completions", {**body, "response_format": {"type": "json_object"}})[0]
        == 200
    )


def test_transformers_serve_capabilities_and_generation(transformers_server):
    url, model = transformers_server
    backend = OpenAIBackend(base_url=url, model=model)
    caps = backend.capabilities()
    assert (caps.continuation, caps.logprobs, caps.json_schema) == (False, False, False)
    assert "422" in caps.how
    # every option asked for at once: a field it refuses would be a 422 (a ScoderError here)
    params = SamplingParams(
        temperature=0.0, max_new_tokens=4, logprobs=2, json_schema={"type": "object"}
    )
    out = backend.generate(CHATS[:1], 2, params)
    assert [len(c) for c in out] == [2] and out[0][0].text and out[0][0].logprobs is None
    assert out[0][0].prompt_tokens > 0
    info = backend.describe()["capabilities"]
    assert info["n"] is False and "ignored" in info["how"]  # it answered n=2 with one choice
    sent = backend.usage["requests"]
    with pytest.raises(ScoderError, match="does not continue a trailing assistant message"):
        backend.generate(CHATS[1:], 1, params)
    assert backend.usage["requests"] == sent  # refused before anything was sent


# -- LoRA adapters through one server ---------------------------------------------------------


def test_adapter_loaded_at_run_time(server, adapter_dir, local, tmp_path):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    backend = OpenAIBackend(base_url=server, model="tiny")
    backend.load_adapters({"round1": adapter_dir})
    served = backend.adapters["round1"]
    try:
        assert served.startswith("round1-") and len(served) == len("round1-") + 8
        assert served in served_models(server)
        base = backend.generate(CHATS, 1, params)
        with backend.adapter("round1"):
            tuned = backend.generate(CHATS, 1, params)
        assert backend.generate(CHATS, 1, params) == base  # the block is over: the base again
        local.load_adapters({"round1": adapter_dir})
        with local.adapter("round1"):
            expected = local.generate(CHATS, 1, params)
        with local.adapter(None):
            assert [c[0].text for c in local.generate(CHATS, 1, params)] == [
                c[0].text for c in base
            ]
        assert [c[0].text for c in tuned] != [c[0].text for c in base]
        assert [c[0].text for c in tuned] == [c[0].text for c in expected]
        assert backend.describe()["adapters"] == {"round1": served}
        backend.load_adapters({"round1": adapter_dir})  # loaded already: fine
        with (
            pytest.raises(ScoderError, match="no adapter named 'round2'"),
            backend.adapter("round2"),
        ):
            pass
        # vLLM's endpoint, directly: a duplicate name and a bad path are 400s
        status, text = post(
            server + "/load_lora_adapter", {"lora_name": served, "lora_path": str(adapter_dir)}
        )
        assert status == 400 and "already been loaded" in text
        status, text = post(
            server + "/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)}
        )
        assert status == 400 and "not a LoRA adapter directory" in text
    finally:
        status, text = post(server + "/unload_lora_adapter", {"lora_name": served})
    assert status == 200 and "removed" in text and served not in served_models(server)
    assert post(server + "/unload_lora_adapter", {"lora_name": served})[0] == 404
    # the server no longer serves the name: a clear error
    with backend.adapter("round1"), pytest.raises(ScoderError, match="answered 404"):
        backend.generate(CHATS[:1], 1, params)


def test_adapter_that_cannot_be_loaded_is_one_clear_error(server, adapter_dir, tmp_path):
    backend = OpenAIBackend(base_url=server, model="tiny")
    with pytest.raises(ScoderError, match="is not a LoRA adapter directory"):
        backend.load_adapters({"empty": tmp_path})
    # the server is told a path (as lora_path_map rewrites it) where there is no adapter
    elsewhere = OpenAIBackend(
        base_url=server, model="tiny", lora_path_map={str(adapter_dir.parent): "/nowhere"}
    )
    where = f"/nowhere/{adapter_dir.name}"
    with pytest.raises(
        ScoderError, match=f"did not load LoRA checkpoint 'moved' from {where} \\(400"
    ):
        elsewhere.load_adapters({"moved": adapter_dir})
    assert served_models(server) == ["tiny", "ckpt1"]


def test_preloaded_adapters_are_checked_by_name(server, adapter_dir):
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    backend = OpenAIBackend(base_url=server, model="tiny", lora_adapters="preloaded")
    with pytest.raises(ScoderError, match="does not serve the LoRA checkpoint\\(s\\) nope1, nope2"):
        backend.load_adapters({"ckpt1": adapter_dir, "nope1": adapter_dir, "nope2": adapter_dir})
    backend.load_adapters({"ckpt1": adapter_dir})
    with backend.adapter("ckpt1"):
        tuned = backend.generate(CHATS[:1], 1, params)
    direct = OpenAIBackend(base_url=server, model="ckpt1").generate(CHATS[:1], 1, params)
    assert tuned[0][0].text == direct[0][0].text


def test_adapters_load_between_batches_while_clients_generate(server, adapter_dir):
    """Loads go through the thread that owns the model: concurrent generation is unaffected."""
    from concurrent.futures import ThreadPoolExecutor

    body = {"model": "tiny", "messages": CHATS[0], "max_tokens": 4, "temperature": 0}
    names = [f"busy{i}" for i in range(3)]
    try:
        with ThreadPoolExecutor(8) as pool:
            generations = [pool.submit(post, server + "/chat/completions", body) for _ in range(12)]
            loads = [
                pool.submit(
                    post,
                    server + "/load_lora_adapter",
                    {"lora_name": name, "lora_path": str(adapter_dir)},
                )
                for name in names
            ]
            answers = [f.result() for f in generations]
            assert all(f.result()[0] == 200 for f in loads)
        assert all(status == 200 for status, _ in answers)
        assert (
            len({json.loads(text)["choices"][0]["message"]["content"] for _, text in answers}) == 1
        )
    finally:
        for name in names:
            post(server + "/unload_lora_adapter", {"lora_name": name})
    assert served_models(server) == ["tiny", "ckpt1"]


# -- whole stages through servers ---------------------------------------------------------------


def _seeded_run(tmp_path, *sets):
    from scoder.config import load_config
    from scoder.seeds import run_seeds

    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "m.py").write_text(
        "".join(f"def f{i}(x):\n    y = x + {i}\n    return y * {i}\n\n\n" for i in range(3))
    )
    cfg = load_config(None, [f"run_dir={tmp_path / 'run'}", f"seeds.source={code}", *sets])
    run_seeds(cfg)
    return cfg


def test_teacher_and_synthesis_through_transformers_serve(transformers_server, tmp_path):
    """A server that knows nothing of scoder: no prefill is sent (it would be a 422), n=2 becomes
    two requests per seed, and every answer is recorded, kept or dropped with its reason."""
    from scoder.synthesize import run_synthesize
    from scoder.teacher import run_teacher

    url, model = transformers_server
    theirs = f"{{backend: openai, base_url: '{url}', name: '{model}'}}"
    cfg = _seeded_run(
        tmp_path, f"teacher.model={theirs}", "teacher.route=generate",
        "model.backend=openai", f"model.base_url={url}", f"model.name={model}",
        "synthesis.n=2", "synthesis.max_new_tokens=8",
    )  # fmt: skip
    run, samples = run_teacher(cfg)
    teacher = run.load_manifest()["stages"]["teacher"]
    # the teacher answers each seed once, whatever synthesis.n is: a request per seed
    assert len((run.stage_dir("teacher") / "requests.jsonl").read_text().splitlines()) == 3
    run, result = run_synthesize(cfg)
    # each seed's n=2 request came back with one answer (kept), then one more request
    assert len(result.accepted) + len(result.rejected) == 6
    assert all(c.sampling["prefill"] is False for c in result.accepted + result.rejected)
    assert all(c.drop.reason for c in result.rejected)
    stage = run.load_manifest()["stages"]["synthesize"]
    assert stage["capabilities"]["continuation"] is False and stage["capabilities"]["n"] is False
    assert stage["model"]["usage"]["requests"] == 6 and teacher["counts"]


def test_checkpoints_sampled_through_scoder_serve_with_adapters_loaded_at_run_time(
    server, adapter_dir, tmp_path
):
    """Multi-checkpoint synthesis with the OpenAI backend: each checkpoint is registered with the
    server (POST /v1/load_lora_adapter) and sampled under its served name, each from its own
    random stream; the candidates name the checkpoint they came from."""
    import shutil

    from scoder.synthesize import run_synthesize

    second = tmp_path / "epoch-2"
    shutil.copytree(adapter_dir, second)
    cfg = _seeded_run(
        tmp_path, "model.backend=openai", f"model.base_url={server}", "model.name=tiny",
        "synthesis.n=1", "synthesis.max_new_tokens=8", "synthesis.temperature=1.0",
    )  # fmt: skip
    before = set(served_models(server))
    run, result = run_synthesize(cfg, checkpoints=[adapter_dir, second])
    rows = result.accepted + result.rejected
    assert len(rows) == 6 and {c.checkpoint for c in rows} == {adapter_dir.name, "epoch-2"}
    registered = set(served_models(server)) - before
    assert len(registered) == 2  # each checkpoint under a name of its own (name + content hash)
    model = run.load_manifest()["stages"]["synthesize"]["model"]
    assert set(model["adapters"]) == {adapter_dir.name, "epoch-2"}
    assert set(model["adapters"].values()) == registered
    seeds = {c.checkpoint: c.sampling["seed"] for c in rows}
    assert len(set(seeds.values())) == 2  # a random stream per checkpoint
    for name in registered:
        post(server + "/unload_lora_adapter", {"lora_name": name})
