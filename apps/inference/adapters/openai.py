"""OpenAI-compatible servers (vLLM, TGI, SGLang, llama.cpp, Ollama): chat, completions and embeddings, streamed or not.

The client's body is forwarded as it came, with `model` set to the name the server serves (the portal's model
name: configure the server's served model name to match). Streams always ask the server for a final usage chunk
(`stream_options.include_usage`), so the record carries the tokens the server counted, whatever the client asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx

from apps.inference.adapters.base import (
    ProtocolAdapter,
    UpstreamAnswer,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
    upstream_post,
    upstream_status_check,
)
from apps.inference.http import http_client

PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions", "embeddings": "/v1/embeddings"}


def openai_output_digest(operation: str, body: object) -> object:
    """What the record's output hash covers: the generated texts or the vectors, not ids and timestamps.

    The same answer hashes alike whether it was streamed (and assembled) or not.
    """
    if not isinstance(body, dict):
        return body
    if operation == "embeddings":
        return [item.get("embedding") for item in body.get("data") or [] if isinstance(item, dict)]
    texts = []
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        texts.append(message.get("content") if operation == "chat" else choice.get("text"))
    return texts


def usage_tokens(body: object) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens from an answer's or a chunk's `usage`, when the server sent it."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt = prompt if isinstance(prompt, int) and prompt >= 0 else None
    completion = completion if isinstance(completion, int) and completion >= 0 else 0 if prompt is not None else None
    return prompt, completion


def _body(request: UpstreamRequest, *, stream: bool) -> dict:
    body = {**(request.payload or {}), "model": request.model_name}
    body.pop("stream", None)
    body.pop("stream_options", None)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _path(request: UpstreamRequest) -> str:
    try:
        return PATHS[request.operation]
    except KeyError:
        raise UpstreamRejected(
            "This model is served over the OpenAI protocol: call /v1/chat/completions, /v1/completions or "
            "/v1/embeddings.",
            400,
        ) from None


class OpenAIAdapter(ProtocolAdapter):
    name = "openai"
    health_path = "/v1/models"

    def predict(self, request: UpstreamRequest) -> UpstreamAnswer:
        """One non-streamed call; the answer is the server's body, with the usage it reported."""
        body, status, elapsed_ms = upstream_post(request, _path(request), _body(request, stream=False))
        if not isinstance(body, dict):
            raise UpstreamFailed("The model server's answer is not a JSON object.")
        prompt, completion = usage_tokens(body)
        return UpstreamAnswer(body, status, elapsed_ms, request.base_url, prompt, completion)

    def stream(self, request: UpstreamRequest) -> Iterator[dict]:
        """Yield the server's chunks as they arrive (Server-Sent Events, `data: {...}` up to `data: [DONE]`).

        The request's timeout bounds the wait for each chunk, not the whole stream. Closing the generator closes
        the connection, which is how a server learns the client has gone and stops generating.
        """
        url = request.base_url.rstrip("/") + _path(request)
        timeout = httpx.Timeout(request.timeout_seconds, connect=min(request.timeout_seconds, 10))
        try:
            with http_client().stream(
                "POST", url, json=_body(request, stream=True), headers=request.headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    response.read()
                    upstream_status_check(response)
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    try:
                        chunk = json.loads(data)
                    except ValueError as exc:
                        raise UpstreamFailed("The model server sent a chunk that is not JSON.") from exc
                    if isinstance(chunk, dict):
                        yield chunk
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise UpstreamUnavailable(f"Could not connect to the model server: {exc}", sent=False) from exc
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
            raise UpstreamTimeout() from exc
        except httpx.TransportError as exc:
            raise UpstreamUnavailable(f"The model server connection failed: {exc}", sent=True) from exc
