"""The OpenAI backend against a misbehaving server (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from servers import free_port

from scoder.errors import ScoderError
from scoder.models import SamplingParams
from scoder.models.openai_backend import OpenAIBackend
from scoder.synthesize import parse_synthesis

CHAT = [[{"role": "user", "content": "Write a function."}]]


class FlakyAPI:
    """Answers /v1/chat/completions; `behaviour` decides how each request goes."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.requests: list[float] = []
        self.bodies: list[tuple[str, dict]] = []  # (path, body) of each POST
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(time.monotonic())
                api.bodies.append((self.path, body))
                status, payload, headers = api.behaviour(len(api.requests), body)
                self._send(status, payload, headers)

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def completion(n=1, content="### Problem\nAdd.", finish="stop"):
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
            for i in range(n)
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3 * n, "total_tokens": 5 + 3 * n},
    }


@pytest.fixture
def api():
    servers = []

    def start(behaviour):
        servers.append(FlakyAPI(behaviour))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_429_storm_backs_off_then_succeeds(api):
    server = api(
        lambda i, body: (
            (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"})
            if i <= 3
            else (200, completion(), {})
        )
    )
    out = OpenAIBackend(base_url=server.url, model="m", max_retries=5).generate(
        CHAT, 1, SamplingParams(max_new_tokens=8)
    )
    assert out[0][0].text == "### Problem\nAdd."
    assert len(server.requests) == 4  # three refusals, one success: no busy loop
    gaps = [b - a for a, b in zip(server.requests, server.requests[1:])]
    assert all(g >= 0.15 for g in gaps), gaps  # it waited as told each time


def test_server_errors_beyond_the_retries_stop_with_a_resumable_message(api, tmp_path):
    server = api(
        lambda i, body: (
            (200, completion(), {})
            if body["seed"] == 0
            else (503, {"error": {"message": "down"}}, {})
        )
    )
    backend = OpenAIBackend(base_url=server.url, model="m", max_retries=1, max_concurrency=1)
    backend.use_request_log(tmp_path / "requests.jsonl")
    chats = CHAT * 3
    with pytest.raises(ScoderError, match="answered 503.*finished requests are kept"):
        backend.generate(chats, 1, SamplingParams(max_new_tokens=8, seed=0))
    kept = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert len(kept) == 1  # the request that succeeded is kept for the re-run


def test_server_that_ignores_n_gets_one_request_per_sample(api):
    server = api(lambda i, body: (200, completion(n=1, content=f"sample {body['seed']}"), {}))
    out = OpenAIBackend(base_url=server.url, model="m").generate(
        CHAT, 3, SamplingParams(max_new_tokens=8, seed=10)
    )
    assert len(out[0]) == 3 and len({c.text for c in out[0]}) == 3
    # the n=3 try (its one answer kept as the first sample), then one request per missing sample
    assert len(server.requests) == 1 + 2 and out[0][0].text == "sample 10"
    assert [c.text for c in out[0][1:]] == ["sample 11", "sample 12"]


@pytest.mark.parametrize(
    ("content", "reason"), [("", "empty_output"), ("Sorry, I cannot help.", "missing_problem")]
)
def test_empty_or_useless_answers_become_drop_reasons(api, content, reason):
    server = api(lambda i, body: (200, completion(content=content), {}))
    (c,) = OpenAIBackend(base_url=server.url, model="m").generate(
        CHAT, 1, SamplingParams(max_new_tokens=8)
    )[0]
    assert parse_synthesis(c.text, c.finish_reason).reason == reason


def test_malformed_response_body_is_a_clear_error(api):
    server = api(lambda i, body: (200, b"{not json", {}))
    with pytest.raises(ScoderError, match="malformed response.*finished requests are kept"):
        OpenAIBackend(base_url=server.url, model="m", max_retries=0).generate(
            CHAT, 1, SamplingParams(max_new_tokens=8)
        )


# -- what a server can do: probed, and only what it honours is sent ---------------------------

OPTIONAL_FIELDS = {"logprobs", "top_logprobs", "response_format"}
OPENAI_FIELDS = {"model", "messages", "n", "temperature", "top_p", "max_tokens", "seed"}
OPENAI_FIELDS |= OPTIONAL_FIELDS
PREFILLED = [CHAT[0] + [{"role": "assistant", "content": "###"}]]


def hosted(i, body):
    """A hosted API: vLLM's fields are refused with 400; logprobs and schemas are ignored."""
    unknown = set(body) - OPENAI_FIELDS
    if unknown:
        return 400, {"error": {"message": f"Unrecognized request arguments: {unknown}"}}, {}
    return 200, completion(n=1, content="Hello! How can I help?"), {}


def vllm_like(i, body):
    """Continues a trailing assistant message, returns logprobs, enforces the schema."""
    answer = completion(n=body.get("n", 1))
    answer["usage"]["prompt_tokens"] = 4 if body.get("continue_final_message") else 7
    if body.get("response_format"):
        for choice in answer["choices"]:
            choice["message"]["content"] = '{"digit": 3}'
    if body.get("logprobs"):
        top = [
            {"token": t, "logprob": lp, "bytes": list(t.encode())}
            for t, lp in [("A", -0.1), ("B", -2.5)]
        ]
        first = {**top[0], "top_logprobs": top[: body["top_logprobs"]]}
        for choice in answer["choices"]:
            choice["logprobs"] = {"content": [first]}
    return 200, answer, {}


def generation_bodies(server):
    """The bodies of real requests (the probes ask for at most 8 tokens)."""
    return [b for path, b in server.bodies if path.endswith("/completions") and b["max_tokens"] > 8]


def test_hosted_api_gets_no_field_it_refuses(api):
    server = api(hosted)
    backend = OpenAIBackend(base_url=server.url, model="m")
    caps = backend.capabilities()
    assert (caps.continuation, caps.logprobs, caps.json_schema) == (False, False, False)
    assert "continuation: refused (400)" in caps.how
    probes = len(server.bodies)
    assert 3 <= probes <= 4 and all(b["max_tokens"] <= 8 for _, b in server.bodies)
    backend.capabilities()
    assert len(server.bodies) == probes  # probed once
    params = SamplingParams(max_new_tokens=32, logprobs=3, json_schema={"type": "object"})
    out = backend.generate(CHAT, 2, params)
    assert len(out[0]) == 2 and out[0][0].logprobs is None
    bodies = generation_bodies(server)
    assert bodies and all(set(b) <= OPENAI_FIELDS - OPTIONAL_FIELDS for b in bodies)
    with pytest.raises(ScoderError, match="does not continue a trailing assistant message"):
        backend.generate(PREFILLED, 1, params)
    assert len(generation_bodies(server)) == len(bodies)  # nothing sent


def test_server_that_ignores_the_continuation_fields_does_not_continue(api):
    server = api(lambda i, body: (200, completion(), {}))  # same prompt tokens either way
    caps = OpenAIBackend(base_url=server.url, model="m").capabilities()
    assert not caps.continuation and "prompt tokens 5 continued, 5 as a new turn" in caps.how
    assert not caps.logprobs and not caps.json_schema  # no logprobs, and prose is no schema

    def no_usage(i, body):
        answer = completion()
        del answer["usage"]
        return 200, answer, {}

    server = api(no_usage)
    assert not OpenAIBackend(base_url=server.url, model="m").capabilities().continuation


def test_vllm_like_server_gets_the_fields_it_honours(api, tmp_path):
    server = api(vllm_like)
    backend = OpenAIBackend(base_url=server.url, model="m")
    caps = backend.capabilities()
    assert (caps.continuation, caps.logprobs, caps.json_schema) == (True, True, True)
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    params = SamplingParams(max_new_tokens=32, logprobs=2, json_schema=schema)
    backend.use_request_log(tmp_path / "requests.jsonl")
    (c,) = backend.generate(PREFILLED, 1, params)[0]
    (body,) = generation_bodies(server)
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["logprobs"] is True and body["top_logprobs"] == 2
    assert body["response_format"]["json_schema"]["schema"] == schema
    (token,) = c.logprobs
    assert (token.token, token.logprob, token.top) == ("A", -0.1, (("A", -0.1), ("B", -2.5)))
    recorded = json.loads((tmp_path / "requests.capabilities.json").read_text())
    assert recorded["capabilities"]["continuation"] is True
    # without logprobs or a schema asked for, neither is sent
    backend.generate(CHAT, 1, SamplingParams(max_new_tokens=32))
    assert not {"logprobs", "response_format", "extra_body"} & set(generation_bodies(server)[-1])


def test_probe_that_cannot_reach_the_server_is_a_clear_error():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(base_url=dead, model="m", check_server=False, max_retries=0)
    with pytest.raises(ScoderError, match=f"cannot reach the OpenAI-compatible server at {dead}"):
        backend.capabilities()


# -- LoRA checkpoints through one server ------------------------------------------------------


def test_load_adapters_posts_each_checkpoint_under_a_content_name(api, adapter_dir, tmp_path):
    loaded: list[str] = []

    def behaviour(i, body):
        if "lora_name" not in body:
            return 200, completion(), {}
        if body["lora_path"] in loaded:  # vLLM refuses a name twice; the same content is fine
            return 400, {"error": {"message": "The lora adapter has already been loaded."}}, {}
        loaded.append(body["lora_path"])
        return 200, b"Success", {}

    server = api(behaviour)
    backend = OpenAIBackend(
        base_url=server.url + "/",
        model="m",
        lora_path_map={str(adapter_dir.parent): "/srv/ckpts", str(tmp_path): "/elsewhere"},
    )
    backend.load_adapters({"round1": adapter_dir, "again": adapter_dir})
    (path, body), (_, again) = server.bodies
    assert path == "/v1/load_lora_adapter"
    assert body["lora_path"] == f"/srv/ckpts/{adapter_dir.name}"
    assert body["lora_name"].startswith("round1-") and again["lora_name"].startswith("again-")
    assert body["lora_name"][-8:] == again["lora_name"][-8:]  # the same content
    with backend.adapter("round1"):
        backend.generate(CHAT, 1, SamplingParams(max_new_tokens=32))
    assert server.bodies[-1][1]["model"] == body["lora_name"]
    backend.generate(CHAT, 1, SamplingParams(max_new_tokens=32))
    assert server.bodies[-1][1]["model"] == "m"


def test_server_without_runtime_lora_loading_is_one_clear_error(api, adapter_dir):
    server = api(lambda i, body: (404, {"detail": "Not Found"}, {}))
    backend = OpenAIBackend(base_url=server.url, model="m")
    with pytest.raises(ScoderError, match="cannot load adapters at run time.*preloaded"):
        backend.load_adapters({"round1": adapter_dir})
