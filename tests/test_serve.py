"""`scoder serve` + the OpenAI backend, end to end: a real server process, the real openai client."""

from __future__ import annotations

import json
import urllib.request

import pytest
from conftest import free_port

from scoder.errors import ScoderError
from scoder.models import SamplingParams
from scoder.models.openai_backend import OpenAIBackend

CHATS = [
    [{"role": "user", "content": "Write a function."}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "### Problem\n"}],
]


def test_models_list_names_base_and_adapters(server):
    with urllib.request.urlopen(server + "/models") as r:
        assert [m["id"] for m in json.load(r)["data"]] == ["tiny", "ckpt1"]


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


def test_request_log_means_a_rerun_sends_nothing(server, tmp_path):
    log = tmp_path / "requests.jsonl"
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=5)
    first = OpenAIBackend(base_url=server, model="tiny")
    first.use_request_log(log)
    a = first.generate(CHATS, 1, params)
    # the same requests against a server that is not there: answered from the log
    offline = OpenAIBackend(
        base_url=f"http://127.0.0.1:{free_port()}/v1", model="tiny", check_server=False
    )
    offline.use_request_log(log)
    b = offline.generate(CHATS, 1, params)
    assert [c[0].text for c in a] == [c[0].text for c in b]
    assert offline.usage["requests"] == 0 and offline.usage["cached_requests"] == 2
    log.write_text(log.read_text() + '{"key": "cut by a cra')  # a torn last line is ignored
    offline.generate(CHATS, 1, params)


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
