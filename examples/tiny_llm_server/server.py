"""A small OpenAI-compatible model server for the tiny GPT-2 of `build_model.py` (or any causal LM directory).

    python server.py MODEL_DIR --port 8000 [--model-name tiny-gpt2] [--host 127.0.0.1]

Endpoints: `/v1/models`, `/v1/completions` and `/v1/chat/completions` (server-sent events with
`stream: true`, ending in `data: [DONE]`), `/health`, and `/metrics` (the in-flight request count).
Decoding is greedy, so identical requests give identical answers; the completion id is derived from the
request, so identical requests to one server give byte-identical responses.

Knobs (environment): `STARTUP_DELAY_S` waits that long before listening (a deterministic cold start: the
port does not accept connections until the server is ready), `TOKEN_DELAY_MS` sleeps that long before each
generated token (keeps requests in flight). `--port` defaults to `$PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

DEFAULT_MAX_TOKENS = 16  # short answers keep tests fast; a request may ask for up to MAX_TOKENS
MAX_TOKENS = 256


@dataclass
class Engine:
    """The model, its tokenizer and the in-flight count."""

    model: Any
    tokenizer: Any
    name: str
    token_delay_s: float = 0.0
    created: int = field(default_factory=lambda: int(time.time()))
    inflight: int = 0

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (at least one: the end-of-text token for an empty prompt)."""
        return list(self.tokenizer.encode(text)) or [self.tokenizer.eos_token_id]

    async def tokens(self, prompt: str, max_tokens: int) -> AsyncIterator[str]:
        """Greedy decoding, one piece of text per token (the cache keeps each step one position long)."""
        import torch  # noqa: PLC0415

        ids = torch.tensor([self.encode(prompt)[-400:]])
        past = None
        for _ in range(max_tokens):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            with torch.no_grad():
                out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = int(out.logits[0, -1].argmax())
            ids = torch.tensor([[token]])
            yield self.tokenizer.decode([token])


def chat_prompt(messages: list[dict[str, Any]]) -> str:
    """A plain chat template: one 'role: content' line per message, then 'assistant:'."""
    return "".join(f"{m.get('role', 'user')}: {m.get('content', '')}\n" for m in messages) + "assistant:"


def create_app(engine: Engine) -> FastAPI:
    """The FastAPI application serving `engine`."""
    app = FastAPI(title="tiny LLM server")

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(f"# TYPE tiny_llm_inflight gauge\ntiny_llm_inflight {engine.inflight}\n")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": engine.created,
                                            "owned_by": "gpupool"}]}

    async def generate(request: Request, chat: bool) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not JSON", "invalid_request_error")
        if body.get("model") != engine.name:
            return error(404, f"model {body.get('model')!r} not found; this server serves {engine.name}",
                         "not_found_error")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_TOKENS:
            return error(400, f"max_tokens must be 1..{MAX_TOKENS}", "invalid_request_error")
        prompt = chat_prompt(body.get("messages") or []) if chat else str(body.get("prompt", ""))
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:24]
        ident = ("chatcmpl-" if chat else "cmpl-") + digest
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": ident, "created": engine.created, "model": engine.name}
        if body.get("stream"):
            return StreamingResponse(stream(head, kind, prompt, max_tokens, chat), media_type="text/event-stream")
        engine.inflight += 1
        try:
            text = "".join([piece async for piece in engine.tokens(prompt, max_tokens)])
        finally:
            engine.inflight -= 1
        choice = {"index": 0, "finish_reason": "length"} | (
            {"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        usage = {"prompt_tokens": len(engine.encode(prompt)), "completion_tokens": max_tokens,
                 "total_tokens": len(engine.encode(prompt)) + max_tokens}
        return head | {"object": kind, "choices": [choice], "usage": usage}

    async def stream(head: dict[str, Any], kind: str, prompt: str, max_tokens: int, chat: bool) -> AsyncIterator[str]:
        engine.inflight += 1
        try:
            obj = head | {"object": kind + ".chunk" if chat else kind}
            if chat:
                yield _sse(obj | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})
            async for piece in engine.tokens(prompt, max_tokens):
                choice = {"delta": {"content": piece}} if chat else {"text": piece}
                yield _sse(obj | {"choices": [{"index": 0, **choice, "finish_reason": None}]})
            end = {"delta": {}} if chat else {"text": ""}
            yield _sse(obj | {"choices": [{"index": 0, **end, "finish_reason": "length"}]})
            yield "data: [DONE]\n\n"
        finally:
            engine.inflight -= 1

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await generate(request, chat=True)

    return app


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def load(directory: Path, name: str, token_delay_s: float) -> Engine:
    """Load the model and tokenizer in `directory` for serving under `name`."""
    import torch  # noqa: PLC0415
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415

    torch.set_num_threads(1)  # one core per replica: several replicas share a small machine
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    with torch.no_grad():  # warm up: torch's first forward pass is slow, so pay for it before listening
        model(input_ids=torch.tensor([[0]]))
    return Engine(model, AutoTokenizer.from_pretrained(directory), name, token_delay_s)


def main(argv: list[str] | None = None) -> int:
    """Command line: load the model, wait STARTUP_DELAY_S, serve until interrupted."""
    parser = argparse.ArgumentParser(description="Serve a causal LM with an OpenAI-compatible API.")
    parser.add_argument("model", type=Path, help="the model directory (see build_model.py)")
    parser.add_argument("--model-name", default="tiny-gpt2", help="the name clients put in 'model'")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args(argv)
    import uvicorn  # noqa: PLC0415

    engine = load(args.model, args.model_name, float(os.environ.get("TOKEN_DELAY_MS", "0")) / 1000)
    time.sleep(float(os.environ.get("STARTUP_DELAY_S", "0")))
    uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
