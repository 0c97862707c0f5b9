"""Streamed answers (OpenAI `stream: true`): worker -> Redis stream -> the web process -> the client as SSE.

The worker relays each chunk of the model server's stream to a Redis stream of the request's own as soon as it
arrives (one `XADD`), and ends it with an `end` entry; the web process reads it with blocking `XREAD` from an
async generator, so an open stream holds no thread, and writes each chunk out as `data: {...}`, then
`data: [DONE]`. Nothing is buffered whole on either side.

A client that goes away sets the request's cancel key; the worker checks it with every chunk it relays and
closes the upstream connection, which is how an OpenAI-compatible server learns to stop generating. The record
is written when the stream ends, breaks or is cancelled, with the tokens the server reported (the portal always
asks for the final usage chunk) or, failing that, an estimate marked as such.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import IntegrityError

from apps.compliance.models import InferenceRecord
from apps.compliance.payloads import payload_keep_quietly
from apps.compliance.records import record_append
from apps.inference.adapters import UpstreamError, adapter_for
from apps.inference.adapters.openai import usage_tokens
from config.redis import get_redis

logger = logging.getLogger(__name__)

Status = InferenceRecord.Status
STREAM_SECONDS = 120
# Streams are bounded by the wait for each chunk (the server's timeout), and overall by this.
MAX_STREAM_SECONDS = 3600
XREAD_BLOCK_MS = 1000


def stream_key(schema: str, request_id: str) -> str:
    return f"inference-stream:{schema}:{request_id}"


def cancel_key(schema: str, request_id: str) -> str:
    return f"inference-cancel:{schema}:{request_id}"


class _Relay:
    """The worker's side of one stream: chunks out to Redis, cancellation in, with one round trip per chunk."""

    def __init__(self, schema: str, request_id: str, *, include_usage: bool, model_name: str):
        self.key = stream_key(schema, request_id)
        self.cancel = cancel_key(schema, request_id)
        self.include_usage = include_usage
        self.model_name = model_name
        self.client = get_redis()
        self.sent = 0
        self.texts: dict[int, list[str]] = {}
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def chunk(self, chunk: dict) -> bool:
        """Relay one chunk; False when the client has gone and the stream should stop."""
        prompt, completion = usage_tokens(chunk)
        if prompt is not None:
            self.prompt_tokens, self.completion_tokens = prompt, completion
        choices = chunk.get("choices") or []
        for choice in choices:
            if isinstance(choice, dict):
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                text = delta.get("content") if "delta" in choice else choice.get("text")
                if isinstance(text, str):
                    self.texts.setdefault(int(choice.get("index") or 0), []).append(text)
        if not choices and prompt is not None and not self.include_usage:
            return self._cancelled()  # the usage chunk the portal asked for; the client did not
        if not self.include_usage:
            chunk = {name: value for name, value in chunk.items() if name != "usage"}
        pipeline = self.client.pipeline(transaction=False)
        pipeline.xadd(self.key, {"data": json.dumps({**chunk, "model": self.model_name})})
        if self.sent == 0:
            pipeline.expire(self.key, STREAM_SECONDS)
        pipeline.exists(self.cancel)
        replies = pipeline.execute()
        self.sent += 1
        return not replies[-1]

    def _cancelled(self) -> bool:
        return not self.client.exists(self.cancel)

    def end(self, *, error: dict | None = None) -> None:
        pipeline = self.client.pipeline(transaction=False)
        pipeline.xadd(self.key, {"end": json.dumps({"error": error})})
        pipeline.expire(self.key, STREAM_SECONDS)
        pipeline.execute()

    def output(self) -> list[str]:
        """The generated texts, assembled: what the record's output hash covers (as for a non-streamed answer)."""
        return ["".join(self.texts[index]) for index in sorted(self.texts)]


def stream_run(schema: str, envelope: dict) -> str:
    """The worker's half: stream from a replica to Redis, then settle the budget and write the record."""
    from apps.inference.worker import (
        _output_hash,
        budget_settle_for,
        cost_of,
        error_outcome,
        record_fields_base,
        usage_fields,
        with_replicas,
    )

    request_id = envelope["request_id"]
    payload = envelope["body"]
    stream_options = payload.get("stream_options") if isinstance(payload.get("stream_options"), dict) else {}
    relay = _Relay(
        schema,
        request_id,
        include_usage=bool(stream_options.get("include_usage")),
        model_name=envelope["model_name"],
    )
    adapter = adapter_for(envelope["protocol"])
    started = time.perf_counter()

    def relay_from(request) -> bool:
        """Relay one replica's stream; True when the client went away and the stream was cut short."""
        chunks = adapter.stream(request)
        try:
            for chunk in chunks:
                if not relay.chunk(chunk):
                    return True
                if time.perf_counter() - started > MAX_STREAM_SECONDS:
                    raise UpstreamError("upstream_timeout", "The stream ran past its longest allowed time.", 504)
        finally:
            chunks.close()  # closes the connection: the server stops generating
        return False

    # A stream is moved to another replica only while none of it has reached the client.
    replica, cancelled, error, retry_after = with_replicas(
        schema, envelope, relay_from, may_retry=lambda: relay.sent == 0
    )

    upstream_ms = (time.perf_counter() - started) * 1000
    fields = record_fields_base(envelope, replica)
    output = relay.output()
    usage = usage_fields(envelope, relay.prompt_tokens, relay.completion_tokens, _as_answer(envelope, output))
    if relay.sent or error is None:
        fields.update(
            output_sha256=_output_hash(output),
            upstream_ms=int(upstream_ms),
            cost=cost_of(envelope["prices"], usage, upstream_ms),
            **usage,
        )
    ending: dict | None = None
    if error is not None:
        reply = error_outcome(fields, error, retry_after)
        ending = {"code": reply["code"], "message": reply["message"], "http_status": reply["http_status"]}
    elif cancelled:
        fields.update(status=Status.CANCELLED, error_code="client_disconnected")
    else:
        fields.update(status=Status.OK)
    budget_settle_for(envelope, fields)
    try:
        # Before the stream's end: a client that has read `[DONE]` finds its request in the record.
        record_append(**fields)
        payload_keep_quietly(request_id=request_id, input_body=envelope["body"], output=output)
    except IntegrityError:
        logger.warning("streamed request %s was recorded by the web process first", request_id)
    except Exception:
        logger.exception("could not record streamed request %s", request_id)
    relay.end(error=ending)
    return fields["status"]


def _as_answer(envelope: dict, texts: list[str]) -> dict:
    """The assembled stream in the shape of a non-streamed answer, for the token estimate."""
    if envelope["operation"] == "chat":
        return {"choices": [{"message": {"content": text}} for text in texts]}
    return {"choices": [{"text": text} for text in texts]}


_ASYNC_CLIENTS: dict[int, object] = {}


def _async_redis():
    """One asyncio Redis client per event loop (each uvicorn worker process runs one loop)."""
    import asyncio

    import redis.asyncio

    loop = asyncio.get_running_loop()
    client = _ASYNC_CLIENTS.get(id(loop))
    if client is None:
        client = redis.asyncio.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=None)
        _ASYNC_CLIENTS[id(loop)] = client
    return client


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def openai_error_event(code: str, message: str, http_status: int) -> dict:
    kind = "invalid_request_error" if 400 <= http_status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


async def sse_events(
    schema: str,
    request_id: str,
    *,
    first_chunk_seconds: float,
    chunk_seconds: float,
    on_silence: Callable[[], dict] | None = None,
) -> AsyncIterator[bytes]:
    """The web's half: relay the request's Redis stream to the client, chunk by chunk, ending with `[DONE]`.

    Waits at most `first_chunk_seconds` for the first entry (the worker may be busy or lost) and
    `chunk_seconds` between entries after that; on such a silence `on_silence` (run in a thread: it records the
    request) says what happened. If the client disconnects, the server cancels this generator and the cancel
    key tells the worker to stop.
    """
    client = _async_redis()
    key = stream_key(schema, request_id)
    last = "0-0"
    finished = False
    waited_since = time.monotonic()
    limit = first_chunk_seconds
    try:
        while True:
            entries = await client.xread({key: last}, block=XREAD_BLOCK_MS, count=64)
            if not entries:
                if time.monotonic() - waited_since > limit:
                    finished = True
                    reply = {"code": "upstream_timeout", "message": "The model server did not answer in time."}
                    if on_silence is not None:
                        reply = await sync_to_async(on_silence, thread_sensitive=False)()
                    yield sse(openai_error_event(reply["code"], reply["message"], reply.get("http_status", 504)))
                    yield sse("[DONE]")
                    return
                continue
            for entry_id, fields in entries[0][1]:
                last = entry_id
                if b"data" in fields:
                    yield b"data: " + fields[b"data"] + b"\n\n"
                    continue
                finished = True
                ending = json.loads(fields.get(b"end") or b"{}")
                error = ending.get("error")
                if error:
                    yield sse(openai_error_event(error["code"], error["message"], error.get("http_status", 502)))
                yield sse("[DONE]")
                return
            waited_since, limit = time.monotonic(), chunk_seconds
    finally:
        if not finished:
            # The client went away (or the server is shutting down): tell the worker to stop the upstream call.
            get_redis().set(cancel_key(schema, request_id), "1", ex=STREAM_SECONDS)
