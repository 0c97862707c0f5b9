"""The OpenAI-compatible API on the web side: chat, completions and embeddings, streamed or not.

Each request gets every guarantee of predict: key, scope and rate limit (before the view), a key's pin, routing
by `model` to the deployment of an `openai`-protocol server, a check of the body before anything is queued,
the token and spend budgets (reserved before dispatch with the most the request may use, settled by the worker
with what it used), dispatch on the server's GPU-pool queue, and one compliance record per request.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.api.errors import ApiError
from apps.apikeys.budgets import BudgetExceeded, budget_limits_for, budget_refusal, budget_reserve
from apps.inference import idempotency
from apps.inference.adapters.openai import openai_output_digest
from apps.inference.hashing import sha256_hex
from apps.inference.services import (
    IDEMPOTENCY_HOLD_SECONDS,
    REPLAY_CODE,
    Caller,
    Status,
    _no_reply,
    _record_safely,
    _refuse,
    _Request,
    _sha256_bytes,
    envelope_build,
    envelope_send,
    reply_refusal,
    reply_wait,
)
from apps.inference.streaming import sse_events
from apps.inference.tokens import prompt_texts, tokens_estimate
from apps.serving.selectors import DEFAULT_ALIAS, Route, route_resolve

OPERATIONS = ("chat", "completions", "embeddings")
# The record's model for a body too broken to name one (model names never contain parentheses).
NO_MODEL = "(none)"
# What a chat or completion may generate when the client sets no limit: reserved against the budgets up front.
DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class OpenAIAnswer:
    """A non-streamed answer (`body`) or a stream of SSE bytes (`events`), with what the headers say."""

    request_id: str
    model: str
    model_version: str
    body: dict | None = None
    events: AsyncIterator[bytes] | None = None


def openai_call(
    *,
    operation: str,
    caller: Caller,
    raw_body: bytes,
    content_type: str,
    request_id: str,
    plan: str,
    key_limits_source=None,
    http_request=None,
) -> OpenAIAnswer:
    """Serve one OpenAI-style request, or raise `PredictionRefused` (recorded) / a 429 for a budget."""
    state = _Request(
        request_id=request_id,
        caller=caller,
        model_name=NO_MODEL,
        received_at=timezone.now(),
        started=time.perf_counter(),
        input_sha256=_sha256_bytes(raw_body),
    )
    body = _body_checked(state, operation, raw_body, content_type)
    model_name = body["model"]
    state.model_name = model_name
    pins = caller.model_pins or {}
    version = int(pins[model_name]) if model_name in pins else None
    state.alias = None if version is not None else DEFAULT_ALIAS
    route = route_resolve(model_name=model_name, alias=state.alias, version=version)
    if route is None or route.protocol != "openai":
        state.version = version
        message = f"The model `{model_name}` does not exist or you do not have access to it."
        _refuse(state, message, "model_not_found", 404)
    state.version, state.run_id, state.deployment_id = route.version, route.run_id, route.deployment_id
    if not route.replica_urls:
        _refuse(
            state,
            f"No replica of '{model_name}' is up.",
            "model_unavailable",
            503,
            status=Status.UNAVAILABLE,
            headers={"Retry-After": str(settings.CIRCUIT_OPEN_SECONDS)},
        )
    reservation = _budget_reserve(state, operation, body, route, plan, key_limits_source, http_request)
    stream = bool(body.get("stream"))
    envelope = _envelope(state, route, operation, body, stream=stream, reservation=reservation)
    if stream:
        envelope_send(envelope, route)
        grace = settings.INFERENCE_WORKER_GRACE_SECONDS
        events = sse_events(
            connection.schema_name,
            request_id,
            first_chunk_seconds=route.timeout_seconds + grace,
            chunk_seconds=route.timeout_seconds + grace,
            on_silence=_silence_recorder(state, connection.schema_name),
        )
        return OpenAIAnswer(request_id=request_id, model=model_name, model_version=str(state.version), events=events)
    reply = _dispatch_and_wait(state, route, envelope)
    if reply["status"] != Status.OK:
        raise reply_refusal(reply, version=state.version)
    return OpenAIAnswer(request_id=request_id, model=model_name, model_version=str(state.version), body=reply["output"])


def _silence_recorder(state: _Request, schema: str):
    """For a stream whose worker never spoke or fell silent: record why, from whatever thread runs it."""

    def record() -> dict:
        from django.db import connection as thread_connection

        thread_connection.set_schema(schema)
        try:
            return _no_reply(state, schema)
        finally:
            thread_connection.close()

    return record


def _body_checked(state: _Request, operation: str, raw_body: bytes, content_type: str) -> dict:
    """The JSON body, checked as far as routing, budgets and the record need; the model server checks the rest."""
    if content_type.split(";")[0].strip().lower() != "application/json":
        _refuse(state, "Send the body as application/json.", "unsupported_media_type", 415)
    try:
        body = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        _refuse(state, "The body is not valid JSON.", "malformed_json", 400)
    if not isinstance(body, dict):
        _refuse(state, "The body must be a JSON object.", "invalid_request", 400)
    try:
        state.input_sha256 = sha256_hex(body)
    except ValueError:
        _refuse(state, "The body holds a number JSON cannot represent.", "invalid_request", 400)
    model = body.get("model")
    if not isinstance(model, str) or not model or len(model) > 63:
        _refuse(state, "`model` must name a model.", "invalid_request", 400, fields={"model": ["required"]})
    state.model_name = model
    problem = _operation_problem(operation, body)
    if problem:
        field, message = problem
        _refuse(state, message, "invalid_request", 400, fields={field: [message]})
    return body


def _operation_problem(operation: str, body: dict) -> tuple[str, str] | None:
    if operation == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages", "`messages` must be a non-empty list."
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return "messages", f"messages[{index}] must be an object with a `role`."
    elif operation == "completions":
        prompt = body.get("prompt")
        if not isinstance(prompt, str | list) or (isinstance(prompt, list) and not prompt):
            return "prompt", "`prompt` must be a string or a non-empty list."
    else:
        value = body.get("input")
        if not isinstance(value, str | list) or (isinstance(value, list) and not value) or value == "":
            return "input", "`input` must be a non-empty string or list."
        if body.get("stream"):
            return "stream", "Embeddings are not streamed."
    if "stream" in body and not isinstance(body["stream"], bool):
        return "stream", "`stream` must be true or false."
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return name, f"`{name}` must be a positive whole number."
    return None


def _most_tokens(operation: str, body: dict) -> int:
    """The most tokens the request may use: its prompt, plus the completion's limit (or the default one)."""
    prompt = tokens_estimate(prompt_texts(operation, body))
    if operation == "embeddings":
        return prompt
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    return prompt + int(limit)


def _budget_reserve(state, operation, body, route: Route, plan, key_limits_source, http_request) -> dict | None:
    tokens = _most_tokens(operation, body)
    cost = route.prices.per_request + route.prices.per_1k_tokens * Decimal(tokens) / 1000
    key_limits, tenant_limits = budget_limits_for(plan=plan, key=key_limits_source)
    caller = state.caller
    key_prefix = caller.key_prefix or f"user:{caller.user_id}"
    try:
        reservation = budget_reserve(
            schema=connection.schema_name,
            key_prefix=key_prefix,
            key=key_limits,
            tenant=tenant_limits,
            tokens=tokens,
            cost=cost,
        )
    except BudgetExceeded as error:
        refusal = budget_refusal(http_request, error, key_prefix=caller.key_prefix, user_id=caller.user_id)
        _refuse(state, str(refusal.detail), error.code, 429, headers=refusal.headers)
    return {**asdict(reservation), "cost": str(reservation.cost)}


def _envelope(state: _Request, route: Route, operation: str, body: dict, *, stream: bool, reservation) -> dict:
    state.dispatched_at = timezone.now()
    deadline = time.time() + route.timeout_seconds
    return envelope_build(
        state, route, deadline=deadline, body=body, operation=operation, stream=stream, reservation=reservation
    )


def _dispatch_and_wait(state: _Request, route: Route, envelope: dict) -> dict:
    envelope_send(envelope, route)
    return reply_wait(state, envelope["deadline"])


def openai_idempotent(
    *,
    operation: str,
    caller: Caller,
    request_id: str,
    raw_body: bytes,
    key: str,
    endpoint: str,
    call: Callable[[], idempotency.Answer],
) -> idempotency.Outcome:
    """`call()` once per `Idempotency-Key` and body; a duplicate gets the first answer and calls no model.

    As for predict, a replay (or a key refused here) is still recorded, under its own request id, with error
    code `idempotent_replay` and no replica. A streamed request cannot be replayed as a stream, so
    `stream: true` with an `Idempotency-Key` is refused before anything runs.
    """
    state = _Request(
        request_id=request_id,
        caller=caller,
        model_name=NO_MODEL,
        received_at=timezone.now(),
        started=time.perf_counter(),
        input_sha256=_sha256_bytes(raw_body),
    )
    try:
        body = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        if isinstance(body.get("model"), str) and body["model"]:
            state.model_name = body["model"][:63]
        with contextlib.suppress(ValueError):
            state.input_sha256 = sha256_hex(body)
        if body.get("stream") is True:
            _refuse(
                state,
                f"A streamed answer cannot be replayed: send {idempotency.HEADER} without `stream: true`.",
                "idempotency_not_streamable",
                400,
            )
    try:
        outcome = idempotency.idempotent_call(
            scope=idempotency.scope_of(
                schema=connection.schema_name, key_id=caller.key_id, user_id=caller.user_id, endpoint=endpoint
            ),
            key=idempotency.key_check(key),
            fingerprint=idempotency.fingerprint(raw_body),
            hold_seconds=IDEMPOTENCY_HOLD_SECONDS,
            call=call,
        )
    except ApiError as refused:
        _record_safely(state.record_fields(status=Status.REFUSED, error_code=refused.error_code))
        raise
    if outcome.replayed:
        kept = outcome.answer
        fields = state.record_fields(status=Status.OK if kept.status < 300 else Status.REFUSED, error_code=REPLAY_CODE)
        version = kept.headers.get("X-Model-Version", "")
        fields["model_version"] = int(version) if version.isdigit() else None
        if kept.status < 300:
            with contextlib.suppress(ValueError):
                fields["output_sha256"] = sha256_hex(openai_output_digest(operation, kept.body))
        _record_safely(fields)
    return outcome
