"""A model server that answers at once with fixed payloads, so a benchmark measures the portal and not the model.

    python bench/fast_upstream.py --port 8400 [--processes 2]

It speaks both protocols the demo deploys, on one port: MLflow's scoring server (`POST /invocations`,
`GET /ping`, `GET /health`) and the OpenAI API (`GET /v1/models`, `POST /v1/chat/completions` whole or
streamed with a final usage chunk, `POST /v1/embeddings`), plus the KServe readiness path the portal probes.
It is HTTP/1.1 on a bare `asyncio.Protocol`, keep-alive and pipelining included, with no framework: the
direct calls a benchmark compares the portal with should cost as little as loopback allows. It needs no
Django and reads no settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

PREDICTIONS = {"predictions": [0, 2]}  # what the demo's iris model answers for example.json's two rows
DEFAULT_MODELS = ("demo-chat", "all-minilm-l6-v2")
REPLY_WORDS = ("The", "fast", "upstream", "answered", "this.")
PROMPT_TOKENS = 12
EMBEDDING_DIMENSIONS = 384
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 411: "Length Required"}


def response_bytes(status: int, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _json(status: int, payload: object) -> bytes:
    return response_bytes(status, json.dumps(payload, separators=(",", ":")).encode())


def _error(status: int, message: str) -> bytes:
    return _json(status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})


def _usage() -> dict[str, int]:
    completion = len(REPLY_WORDS)
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion, "total_tokens": PROMPT_TOKENS + completion}


def chat_completion(model: str) -> dict:
    """A whole chat completion, shaped as OpenAI sends it, with the usage the portal records and bills."""
    message = {"role": "assistant", "content": " ".join(REPLY_WORDS), "refusal": None}
    return {
        "id": "chatcmpl-fast-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(),
    }


def chat_stream(model: str, *, include_usage: bool) -> bytes:
    """The same answer as Server-Sent Events in chunked encoding: the role, one word a chunk, the finish reason,
    the usage-only chunk when asked for (every other chunk then has `usage: null`, as OpenAI sends it), [DONE]."""
    base = {"id": "chatcmpl-fast-upstream", "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = model
    deltas = [{"role": "assistant", "content": ""}]
    deltas += [{"content": word if index == 0 else f" {word}"} for index, word in enumerate(REPLY_WORDS)]
    choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None} for delta in deltas]
    choices.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"})
    chunks = [{**base, "choices": [choice], **({"usage": None} if include_usage else {})} for choice in choices]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": _usage()})
    events = [f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode() for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    return head + b"".join(b"%x\r\n%s\r\n" % (len(event), event) for event in events) + b"0\r\n\r\n"


def embeddings(model: str, inputs: object) -> dict:
    count = len(inputs) if isinstance(inputs, list) else 1
    vector = [0.0] * (EMBEDDING_DIMENSIONS - 1) + [1.0]  # a unit vector, as sentence embeddings are
    data = [{"object": "embedding", "index": index, "embedding": vector} for index in range(count)]
    usage = {"prompt_tokens": PROMPT_TOKENS * count, "total_tokens": PROMPT_TOKENS * count}
    return {"object": "list", "data": data, "model": model, "usage": usage}


class Answers:
    """Every answer the server gives, the fixed ones encoded once."""

    def __init__(self, models: Sequence[str]) -> None:
        self.default_model = models[0]
        created = int(time.time())
        listed = [{"id": name, "object": "model", "created": created, "owned_by": "fast-upstream"} for name in models]
        self.fixed = {
            ("POST", "/invocations"): _json(200, PREDICTIONS),
            ("GET", "/ping"): response_bytes(200, b"\n", "text/plain"),
            ("GET", "/health"): _json(200, {"status": "ok"}),
            ("GET", "/v2/health/ready"): _json(200, {"ready": True}),
            ("GET", "/v1/models"): _json(200, {"object": "list", "data": listed}),
        }
        self.known_paths = {path for _, path in self.fixed} | {"/v1/chat/completions", "/v1/embeddings"}

    def answer(self, method: str, path: str, body: bytes) -> bytes:
        fixed = self.fixed.get((method, path))
        if fixed is not None:
            return fixed
        if path not in self.known_paths:
            return _error(404, f"{method} {path}: not found")
        if method != "POST":
            return _error(405, f"{method} {path}: method not allowed")
        try:
            payload = json.loads(body)
        except ValueError:
            return _error(400, "The body is not JSON.")
        if not isinstance(payload, dict):
            return _error(400, "The body is not a JSON object.")
        model = payload.get("model") if isinstance(payload.get("model"), str) else self.default_model
        if path == "/v1/embeddings":
            return _json(200, embeddings(model, payload.get("input")))
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            return chat_stream(model, include_usage=isinstance(options, dict) and options.get("include_usage") is True)
        return _json(200, chat_completion(model))


class HttpConnection(asyncio.Protocol):
    """One client connection: requests are parsed as they arrive and answered in order (pipelining works)."""

    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            parsed = self._next_request()
            if parsed is None:
                break
            answer, keep_alive = parsed
            out.append(answer)
            if not keep_alive:
                self.transport.write(b"".join(out))
                self.transport.close()
                return
        if out:
            self.transport.write(b"".join(out))

    def _next_request(self) -> tuple[bytes, bool] | None:
        """(answer, keep the connection) for the first whole request in the buffer, taken off it; None if none is."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                return _error(400, "The request head is too large."), False
            return None
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            return _error(400, "Malformed request line."), False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return _error(411, "Send a Content-Length; chunked bodies are not read here."), False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return _error(400, "Malformed Content-Length."), False
        if length < 0 or length > MAX_BODY_BYTES:
            return _error(400, "Content-Length out of range."), False
        if len(self.buffer) < end + 4 + length:
            return None
        body = bytes(self.buffer[end + 4 : end + 4 + length])
        del self.buffer[: end + 4 + length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
        return self.answers.answer(method, target.split("?", 1)[0], body), keep_alive


async def serve(host: str, port: int, answers: Answers, *, reuse_port: bool) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpConnection(answers), host, port, reuse_port=reuse_port or None, backlog=4096
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def _run_one(host: str, port: int, answers: Answers, *, reuse_port: bool) -> None:
    asyncio.run(serve(host, port, answers, reuse_port=reuse_port))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--processes", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        help=f"a model /v1/models lists (default: {' '.join(DEFAULT_MODELS)})",
    )
    args = parser.parse_args(argv)
    answers = Answers(args.models or DEFAULT_MODELS)
    if args.processes <= 1:
        print(f"fast upstream on http://{args.host}:{args.port}", flush=True)
        _run_one(args.host, args.port, answers, reuse_port=False)
        return 0
    children = []
    for _ in range(args.processes):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _run_one(args.host, args.port, answers, reuse_port=True)
            os._exit(0)
        children.append(pid)
    print(f"fast upstream on http://{args.host}:{args.port} ({args.processes} processes)", flush=True)

    def forward(signum: int, frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        os.waitpid(child, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
