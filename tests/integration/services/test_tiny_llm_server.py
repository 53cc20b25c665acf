"""The example model server alone: OpenAI-compatible answers, SSE streams ending in [DONE], greedy (so
deterministic) output, the in-flight count and the token-delay knob (the cold-start knob is exercised by the
service tests)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.support import tiny_llm
from tests.support.servers import wait_until


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[tiny_llm.TinyServer]:
    running = tiny_llm.start(model_dir, {"TOKEN_DELAY_MS": "20"})  # 20 ms/token: a 16-token stream takes ~0.3 s
    yield running
    running.stop()


CHAT = {"model": tiny_llm.MODEL_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6}


def test_model_files_are_small(model_dir: Path) -> None:
    size = sum(f.stat().st_size for f in model_dir.iterdir())
    assert 0 < size < 1024 * 1024


def test_models_health_and_unknown_model(server: tiny_llm.TinyServer) -> None:
    assert httpx.get(server.url + "/health").status_code == 200
    assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == [tiny_llm.MODEL_NAME]
    missing = httpx.post(server.url + "/v1/completions", json={"model": "other", "prompt": "x"})
    assert missing.status_code == 404 and "other" in missing.json()["error"]["message"]
    bad = httpx.post(server.url + "/v1/completions", json={"model": tiny_llm.MODEL_NAME, "max_tokens": 0})
    assert bad.status_code == 400


def test_streams_end_in_done_and_match_the_plain_answer(server: tiny_llm.TinyServer) -> None:
    plain = httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=30).json()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=CHAT | {"stream": True}, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert streamed == plain["choices"][0]["message"]["content"] and len(chunks) == 6 + 2  # role, 6 tokens, end
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_greedy_output_is_deterministic_byte_for_byte(server: tiny_llm.TinyServer) -> None:
    def raw() -> bytes:
        return httpx.post(server.url + "/v1/completions", json={"model": tiny_llm.MODEL_NAME, "prompt": "The pool",
                                                                 "max_tokens": 5, "stream": True}).content
    first = raw()
    assert first == raw() and first.endswith(b"data: [DONE]\n\n")


def test_openai_client_streams_both_endpoints(server: tiny_llm.TinyServer) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **CHAT)]
    assert len("".join(pieces)) > 0
    text = [c.choices[0].text for c in client.completions.create(model=tiny_llm.MODEL_NAME, prompt="The",
                                                                  max_tokens=3, stream=True)]
    assert len(text) == 4  # 3 tokens and the closing chunk


def test_token_delay_keeps_requests_in_flight(server: tiny_llm.TinyServer) -> None:
    def long_request() -> None:
        httpx.post(server.url + "/v1/completions", json={"model": tiny_llm.MODEL_NAME, "prompt": "x",
                                                          "max_tokens": 200}, timeout=60)

    threads = [threading.Thread(target=long_request) for _ in range(3)]
    started = time.monotonic()
    for t in threads:
        t.start()
    # 200 tokens x 20 ms = 4 s each: all three are generating at once well before the first ends
    seen = wait_until(lambda: "tiny_llm_inflight 3" in httpx.get(server.url + "/metrics").text, 4, 0.02,
                      "three requests in flight")
    for t in threads:
        t.join()
    assert seen and time.monotonic() - started >= 4
    assert "tiny_llm_inflight 0" in httpx.get(server.url + "/metrics").text
