"""Helpers for tests that talk to a real JupyterLab through gpupool's proxy: start a kernel, run code on its
WebSocket (the JSON text protocol, or JupyterLab 4's binary `v1.kernel.websocket.jupyter.org`), read the result."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from websockets.sync.client import connect
from websockets.typing import Subprotocol

V1_PROTOCOL = "v1.kernel.websocket.jupyter.org"


def start_kernel(base: str, headers: Mapping[str, str]) -> str:
    """POST /api/kernels through the proxy; the new kernel's id."""
    response = httpx.post(f"{base}api/kernels", json={"name": "python3"}, headers=dict(headers), timeout=60)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _request(code: str) -> tuple[str, dict[str, Any]]:
    msg_id = uuid.uuid4().hex
    return msg_id, {"header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                               "msg_type": "execute_request", "version": "5.3"},
                    "parent_header": {}, "metadata": {}, "channel": "shell",
                    "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                                "allow_stdin": False}}


def _encode_v1(message: dict[str, Any]) -> bytes:
    """The v1 binary framing: offsets (uint64 LE) then channel, header, parent_header, metadata, content."""
    parts = [message["channel"].encode()] + [json.dumps(message[k]).encode()
                                             for k in ("header", "parent_header", "metadata", "content")]
    count = len(parts) + 1
    offsets = [8 * (count + 1)]
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    return b"".join(n.to_bytes(8, "little") for n in [count, *offsets]) + b"".join(parts)


def _decode_v1(frame: bytes) -> dict[str, Any]:
    count = int.from_bytes(frame[:8], "little")
    offsets = [int.from_bytes(frame[8 * (i + 1):8 * (i + 2)], "little") for i in range(count)]
    parts = [frame[offsets[i]:offsets[i + 1]] for i in range(count - 1)]
    names = ("header", "parent_header", "metadata", "content")
    return {"channel": parts[0].decode(), **{n: json.loads(p) for n, p in zip(names, parts[1:], strict=False)}}


def execute(ws_url: str, headers: Mapping[str, str], code: str, binary: bool = False,
            timeout_s: float = 60) -> tuple[str, str | None]:
    """Run `code` on the kernel's channels WebSocket; (its text/plain result or stream output, the negotiated
    subprotocol)."""
    protocols = [Subprotocol(V1_PROTOCOL)] if binary else None
    msg_id, message = _request(code)
    output = []
    with connect(ws_url, additional_headers=dict(headers), subprotocols=protocols, max_size=None) as ws:
        ws.send(_encode_v1(message) if binary else json.dumps(message))
        while True:
            raw = ws.recv(timeout=timeout_s)
            reply = _decode_v1(raw) if isinstance(raw, bytes) else json.loads(raw)
            if reply.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = reply["header"]["msg_type"]
            if kind == "execute_result":
                return str(reply["content"]["data"]["text/plain"]), ws.subprotocol
            if kind == "stream":
                output.append(reply["content"]["text"])
            if kind == "error":
                raise AssertionError(f"the kernel raised {reply['content']['ename']}: {reply['content']['evalue']}")
            if kind == "status" and reply["content"]["execution_state"] == "idle":
                return "".join(output), ws.subprotocol
