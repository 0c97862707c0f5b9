"""The predict path on the web side: check the request, route it, hand it to a worker of the model's GPU pool, wait.

Everything a client can get wrong is refused here, before any queue or model server is involved, and still
leaves a compliance record (status `refused`). A dispatched request is recorded by the worker that ran it
(see `apps.inference.worker`); the web process writes the record itself only when no worker answered in
time: the request then either never left the queue (`timeout`) or its worker died (`worker_lost`). The
record's unique request id makes sure that, whoever writes, a request is recorded once.

The worker answers on a Redis list of the request's own (`BLPOP` here): one round trip, no result backend
polling, and safe from any number of threads. An async request (`predict_submit`) is checked and dispatched
the same way but not waited for: its reply stays on that list for the job's retention, read by
`apps.inference.jobs`, whose sweep records the jobs nobody answered with the same code as the sync path
(`request_unanswered`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from django.conf import settings
from django.db import IntegrityError, connection
from django.utils import timezone

from apps.api.errors import ApiError
from apps.compliance.models import InferenceRecord
from apps.compliance.records import record_append
from apps.inference import idempotency, jobs
from apps.inference.balancer import started_key
from apps.inference.hashing import sha256_hex
from apps.inference.payloads import ParsedInput, PayloadError, payload_parse
from apps.inference.queueing import task_send
from apps.inference.validation import signature_validate
from apps.serving.selectors import DEFAULT_ALIAS, Route, route_resolve
from apps.serving.services import MAX_TIMEOUT_SECONDS
from config.redis import get_redis, get_redis_for_waiting

logger = logging.getLogger(__name__)

Status = InferenceRecord.Status
REPLY_SECONDS = 120
JSON_TYPES = ("application/json",)
REPLAY_CODE = "idempotent_replay"


def reply_key(schema: str, request_id: str) -> str:
    return f"inference-reply:{schema}:{request_id}"


@dataclass(frozen=True)
class Caller:
    """Who sends the request: a key (with its pins) or a portal member, and from where."""

    user_id: int | None
    client_ip: str | None
    key_id: int | None = None
    key_prefix: str = ""
    model_pins: dict | None = None


@dataclass(frozen=True)
class Prediction:
    """What the client gets back on success."""

    output: object
    model: str
    model_version: str
    alias: str | None
    pinned: bool
    canary: bool
    request_id: str
    latency_ms: float
    upstream_ms: float | None


@dataclass(frozen=True)
class JobAccepted:
    """An async prediction, checked and dispatched; the client polls its job (whose id is the request id)."""

    job_id: str
    model: str
    model_version: str
    alias: str | None
    request_id: str

    @property
    def status(self) -> str:
        return jobs.QUEUED


class PredictionRefused(ApiError):
    """A predict request that failed, already recorded; `status` is the record's, for the metrics."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status_code: int,
        status: str,
        model_version: int | None = None,
        headers: dict | None = None,
    ):
        super().__init__(message, code=code, status_code=status_code, headers=headers)
        self.record_status = status
        self.model_version = str(model_version) if model_version is not None else ""


@dataclass
class _Request:
    """The facts gathered so far about one request, which its record is made of."""

    request_id: str
    caller: Caller
    model_name: str
    received_at: dt.datetime
    started: float
    alias: str | None = None
    version: int | None = None
    run_id: str = ""
    deployment_id: int | None = None
    dispatched_at: dt.datetime | None = None
    input_sha256: str = ""

    def record_fields(self, *, status: str, error_code: str = "", answered_at: dt.datetime | None = None) -> dict:
        answered_at = answered_at or timezone.now()
        return {
            "request_id": self.request_id,
            "key_id": self.caller.key_id,
            "key_prefix": self.caller.key_prefix,
            "user_id": self.caller.user_id,
            "client_ip": self.caller.client_ip,
            "model_name": self.model_name[:63],
            "model_version": self.version,
            "alias": self.alias or "",
            "run_id": self.run_id,
            "deployment_id": self.deployment_id,
            "received_at": self.received_at,
            "dispatched_at": self.dispatched_at,
            "answered_at": answered_at,
            "status": status,
            "error_code": error_code,
            "input_sha256": self.input_sha256,
            "latency_ms": int((time.perf_counter() - self.started) * 1000),
        }


def reply_refusal(reply: dict, *, version: int | None) -> PredictionRefused:
    """The API error for a worker's (or the web's own) reply that carries no answer; already recorded."""
    return PredictionRefused(
        reply["message"],
        code=reply["code"],
        status_code=reply["http_status"],
        status=reply["status"],
        model_version=version,
        headers={"Retry-After": str(reply["retry_after"])} if reply.get("retry_after") else None,
    )


def new_request_id() -> str:
    """Inference request ids are always the portal's own: the record needs them unique, whatever clients send."""
    return uuid.uuid4().hex


@dataclass
class _Checked:
    """A request through every web-side check, ready to dispatch."""

    state: _Request
    route: Route
    parsed: ParsedInput
    canary: bool
    pinned: bool


def predict(
    *,
    caller: Caller,
    model_name: str,
    raw_body: bytes,
    content_type: str,
    request_id: str,
    alias: str | None = None,
    version: int | None = None,
) -> Prediction:
    """Answer one prediction, or raise `PredictionRefused` (recorded) with the API error to send.

    A key's pin on the model beats `alias` and `version`. The version that answers (the canary's, for its
    share of an alias's traffic) is the one whose signature the input is checked against.
    """
    checked = _checked(caller, model_name, raw_body, content_type, request_id, alias, version)
    state = checked.state
    reply = _dispatch_and_wait(checked)
    if reply["status"] != Status.OK:
        raise reply_refusal(reply, version=state.version)
    return Prediction(
        output=reply["output"],
        model=model_name,
        model_version=str(state.version),
        alias=state.alias,
        pinned=checked.pinned,
        canary=checked.canary,
        request_id=request_id,
        latency_ms=round((time.perf_counter() - state.started) * 1000, 2),
        upstream_ms=reply.get("upstream_ms"),
    )


def predict_submit(
    *,
    caller: Caller,
    model_name: str,
    raw_body: bytes,
    content_type: str,
    request_id: str,
    alias: str | None = None,
    version: int | None = None,
) -> JobAccepted:
    """Check and dispatch like `predict`, but return at once: nobody waits, so the reply is kept for the poll.

    Refusals are raised (and recorded) exactly as by `predict`. The job is stored before the request is sent,
    so neither the poll nor the sweep can miss a reply that comes back fast.
    """
    checked = _checked(caller, model_name, raw_body, content_type, request_id, alias, version)
    state = checked.state
    state.dispatched_at = timezone.now()
    deadline = time.time() + checked.route.timeout_seconds
    jobs.job_create(
        schema=connection.schema_name,
        job_id=request_id,
        key_id=caller.key_id,
        user_id=caller.user_id,
        pinned=checked.pinned,
        canary=checked.canary,
        deadline=deadline,
        record=state.record_fields(status=Status.TIMEOUT),
    )
    _send(checked, deadline, reply_seconds=settings.INFERENCE_JOB_RESULT_SECONDS)
    return JobAccepted(
        job_id=request_id,
        model=model_name,
        model_version=str(state.version),
        alias=state.alias,
        request_id=request_id,
    )


def _checked(
    caller: Caller,
    model_name: str,
    raw_body: bytes,
    content_type: str,
    request_id: str,
    alias: str | None,
    version: int | None,
) -> _Checked:
    """Route, canary draw, body and signature: every refusal the web can make, each recorded before it is raised."""
    state = _Request(
        request_id=request_id,
        caller=caller,
        model_name=model_name,
        received_at=timezone.now(),
        started=time.perf_counter(),
        input_sha256=_sha256_bytes(raw_body),
    )
    pinned = caller.model_pins is not None and model_name in caller.model_pins
    if pinned:
        alias, version = None, int(caller.model_pins[model_name])
    state.alias = None if version is not None else (alias or DEFAULT_ALIAS)

    route = route_resolve(model_name=model_name, alias=state.alias, version=version)
    if route is None:
        state.version = version
        target = f"version {version}" if version is not None else f"alias '{state.alias}'"
        _refuse(state, f"No deployed model '{model_name}' with {target}.", "model_not_found", 404, pinned=pinned)
    if route.protocol == "openai":
        state.version = route.version
        _refuse(
            state,
            f"'{model_name}' is served over the OpenAI protocol: call /v1/chat/completions, /v1/completions or "
            "/v1/embeddings with it as `model`.",
            "wrong_api",
            400,
            pinned=pinned,
        )
    canary = bool(route.canary_version) and random.random() * 100 < route.canary_percent  # noqa: S311
    state.version = route.canary_version if canary else route.version
    state.run_id = route.canary_run_id if canary else route.run_id
    state.deployment_id = route.deployment_id

    parsed = _parsed_input(state, raw_body, content_type, route.canary_signature if canary else route.signature)
    if not route.replica_urls:
        _refuse(
            state,
            f"No replica of '{model_name}' is up.",
            "model_unavailable",
            503,
            status=Status.UNAVAILABLE,
            headers={"Retry-After": str(settings.CIRCUIT_OPEN_SECONDS)},
        )
    return _Checked(state=state, route=route, parsed=parsed, canary=canary, pinned=pinned)


def _parsed_input(state: _Request, raw_body: bytes, content_type: str, signature: dict | None) -> ParsedInput:
    """Content type, JSON, MLflow's input forms, then the signature: each refusal recorded with the input's hash."""
    if content_type.split(";")[0].strip().lower() not in JSON_TYPES:
        _refuse(state, "Send the body as application/json.", "unsupported_media_type", 415)
    try:
        body = json.loads(raw_body)
    except (ValueError, UnicodeDecodeError):
        _refuse(state, "The body is not valid JSON.", "malformed_json", 400)
    try:
        parsed = payload_parse(body)
        state.input_sha256 = sha256_hex(parsed.to_mlflow_body())
        signature_validate(parsed, signature)
    except PayloadError as error:
        _refuse(state, error.message, error.code, 422, fields={error.field: [error.message]} if error.field else None)
    except ValueError:  # NaN or Infinity smuggled in through a non-standard decoder
        _refuse(state, "The body holds a number JSON cannot represent.", "invalid_payload", 422)
    return parsed


def _refuse(
    state: _Request,
    message: str,
    code: str,
    http_status: int,
    *,
    status: str = Status.REFUSED,
    pinned: bool = False,
    headers: dict | None = None,
    fields: dict | None = None,
):
    _record_safely(state.record_fields(status=status, error_code=code))
    error = PredictionRefused(
        message, code=code, status_code=http_status, status=status, model_version=state.version, headers=headers
    )
    if fields:
        error.fields = fields
    raise error


def _record_safely(fields: dict) -> bool:
    """Write a record the web is responsible for; False if a worker already recorded this request."""
    try:
        record_append(**fields)
    except IntegrityError:
        logger.info("request %s was already recorded by its worker", fields["request_id"])
        return False
    return True


def _sha256_bytes(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _dispatch_and_wait(checked: _Checked) -> dict:
    """Queue the request on the model's GPU pool and wait for the worker's reply until its deadline (plus grace)."""
    checked.state.dispatched_at = timezone.now()
    deadline = time.time() + checked.route.timeout_seconds
    _send(checked, deadline, reply_seconds=None)
    return reply_wait(checked.state, deadline)


def _send(checked: _Checked, deadline: float, *, reply_seconds: int | None) -> None:
    """One JSON message on the server's GPU-pool queue with everything the worker and the record need."""
    envelope = envelope_build(
        checked.state, checked.route, deadline=deadline, body=checked.parsed.to_mlflow_body(), canary=checked.canary
    )
    if reply_seconds:
        envelope["reply_seconds"] = reply_seconds
    envelope_send(envelope, checked.route)


def envelope_build(
    state: _Request, route: Route, *, deadline: float, body: dict, canary: bool = False, **extra
) -> dict:
    """The message a worker gets: the request's body and every fact its record needs, as JSON.

    Shared by predict and the OpenAI endpoints, which add `operation`, `stream` and the budget `reservation`.
    """
    return {
        "request_id": state.request_id,
        "model_name": route.model_name,
        "mlflow_name": route.mlflow_name,
        "version": state.version,
        "alias": state.alias or "",
        "canary": canary,
        "run_id": state.run_id,
        "deployment_id": route.deployment_id,
        "server_id": route.server_id,
        "protocol": route.protocol,
        "replica_urls": list(route.replica_urls),
        "auth_header": route.auth_header,
        "deadline": deadline,
        "body": body,
        "input_sha256": state.input_sha256,
        "key_id": state.caller.key_id,
        "key_prefix": state.caller.key_prefix,
        "user_id": state.caller.user_id,
        "client_ip": state.caller.client_ip,
        "received_at": state.received_at.isoformat(),
        "dispatched_at": state.dispatched_at.isoformat(),
        "prices": {
            "per_request": str(route.prices.per_request),
            "per_1k_tokens": str(route.prices.per_1k_tokens),
            "per_gpu_second": str(route.prices.per_gpu_second),
        },
        **extra,
    }


def envelope_send(envelope: dict, route: Route) -> None:
    """Queue the message on the server's GPU pool; a worker that takes it up past its deadline drops it unrun."""
    from apps.inference.tasks import predict_on_worker

    task_send(
        predict_on_worker,
        [envelope],
        queue=route.queue_name,
        argsrepr=f"[<request {envelope['request_id']} to {route.model_name}>]",
    )


def reply_wait(state: _Request, deadline: float) -> dict:
    """The worker's reply, or (past the deadline and the grace) the record of why there is none."""
    schema = connection.schema_name
    wait = max(1, int(deadline - time.time() + settings.INFERENCE_WORKER_GRACE_SECONDS + 0.999))
    answer = get_redis_for_waiting().blpop([reply_key(schema, state.request_id)], timeout=wait)
    if answer is not None:
        return json.loads(answer[1])
    return _no_reply(state, schema)


def _no_reply(state: _Request, schema: str) -> dict:
    reply, recorded = request_unanswered(schema=schema, fields=state.record_fields(status=Status.TIMEOUT))
    if not recorded:
        # The worker got its record in after all: its reply is on the way or already there.
        answer = get_redis_for_waiting().blpop([reply_key(schema, state.request_id)], timeout=1)
        if answer is not None:
            return json.loads(answer[1])
    return reply


def request_unanswered(*, schema: str, fields: dict) -> tuple[dict, bool]:
    """A dispatched request no worker answered in time: record why (never picked up, or its worker died).

    Shared by the waiting web process and the sweep of async jobs. Returns the failed reply and whether this
    call wrote the record: False means a worker recorded the request after all, and its own reply follows.
    """
    started = get_redis().delete(started_key(schema, fields["request_id"]))
    if started:
        status, code, http_status = Status.WORKER_LOST, "worker_lost", 502
        message = "The worker handling the request stopped before answering; the model may or may not have run."
    else:
        status, code, http_status = Status.TIMEOUT, "upstream_timeout", 504
        message = "No worker took the request up before its deadline."
    recorded = _record_safely({**fields, "status": status, "error_code": code})
    return {"status": status, "code": code, "http_status": http_status, "message": message}, recorded


# --- Idempotency-Key -----------------------------------------------------------------------------------------

# The longest a first request may hold its key: the longest server timeout, the worker's grace, and some slack.
IDEMPOTENCY_HOLD_SECONDS = MAX_TIMEOUT_SECONDS + 30


def predict_idempotent(
    *,
    caller: Caller,
    model_name: str,
    request_id: str,
    raw_body: bytes,
    started: float,
    key: str,
    endpoint: str,
    variants: tuple[str, ...],
    call: Callable[[], idempotency.Answer],
) -> idempotency.Outcome:
    """`call()` once per `Idempotency-Key` and request; a duplicate gets the first answer and calls no model.

    A replay is still a request that passed authentication, so it gets a compliance record of its own (its own
    request id, status `ok` for a kept 2xx and `refused` for a kept 4xx, error code `idempotent_replay`, no
    replica, no cost): the record stays one row per request, and counting rows with a replica still counts
    model calls. A key refused here (malformed, reused for another request, still in use) is recorded
    `refused` like any other refusal.
    """
    try:
        checked_key = idempotency.key_check(key)
        scope = idempotency.scope_of(
            schema=connection.schema_name, key_id=caller.key_id, user_id=caller.user_id, endpoint=endpoint
        )
        outcome = idempotency.idempotent_call(
            scope=scope,
            key=checked_key,
            fingerprint=idempotency.fingerprint(raw_body, *variants),
            hold_seconds=IDEMPOTENCY_HOLD_SECONDS,
            call=call,
        )
    except ApiError as refused:
        _record_unserved(caller, model_name, request_id, raw_body, started, Status.REFUSED, refused.error_code)
        raise
    if outcome.replayed:
        _record_unserved(
            caller,
            model_name,
            request_id,
            raw_body,
            started,
            Status.OK if outcome.answer.status < 300 else Status.REFUSED,
            REPLAY_CODE,
            kept=outcome.answer.body,
        )
    return outcome


def _record_unserved(
    caller: Caller,
    model_name: str,
    request_id: str,
    raw_body: bytes,
    started: float,
    status: str,
    error_code: str,
    *,
    kept: object = None,
) -> None:
    """Record a request that reached no model: refused by the idempotency check, or replayed (`kept` answer)."""
    kept = kept if isinstance(kept, dict) else {}
    version = kept.get("model_version")
    now = timezone.now()
    state = _Request(
        request_id=request_id,
        caller=caller,
        model_name=model_name,
        received_at=now - dt.timedelta(seconds=time.perf_counter() - started),
        started=started,
        alias=kept.get("alias") or None,
        version=int(version) if isinstance(version, str) and version.isdigit() else None,
        input_sha256=_input_sha256(raw_body),
    )
    fields = state.record_fields(status=status, error_code=error_code, answered_at=now)
    if "output" in kept:
        fields["output_sha256"] = _output_sha256(kept["output"])
    _record_safely(fields)


def _input_sha256(raw_body: bytes) -> str:
    """The hash the model call's record has for this body (its canonical form), or the bytes' for one it refused."""
    try:
        return sha256_hex(payload_parse(json.loads(raw_body)).to_mlflow_body())
    except (ValueError, UnicodeDecodeError, PayloadError):
        return _sha256_bytes(raw_body)


def _output_sha256(output: object) -> str:
    try:
        return sha256_hex(output)
    except ValueError:
        return ""
