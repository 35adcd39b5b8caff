"""The OpenAI backend against a misbehaving server (a real HTTP server on loopback)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

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
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append(time.monotonic())
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
    assert len(server.requests) == 1 + 3  # the n=3 try, then one per sample


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
