"""The predict path on the worker side: pick a replica, call it, record the request, answer the waiting web process.

Runs in a Celery worker of the model's GPU pool, in the tenant's schema. The upstream call never outlives the
request's deadline, so a live worker always answers before the web process stops waiting. Only connection
failures before anything was sent move on to another replica; a request that may have reached a model is
never sent twice. The record is appended after the model call, so no lock is held across it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import TypeVar

from django.db import IntegrityError, connection
from django.utils import timezone

from apps.compliance.models import InferenceRecord
from apps.compliance.payloads import payload_keep_quietly
from apps.compliance.records import record_append
from apps.inference.adapters import UpstreamError, UpstreamRejected, UpstreamRequest, UpstreamUnavailable, adapter_for
from apps.inference.adapters.openai import openai_output_digest
from apps.inference.balancer import replica_pick, replica_release
from apps.inference.hashing import sha256_hex
from apps.inference.payloads import payload_parse
from apps.inference.tokens import prompt_texts, tokens_estimate
from apps.serving.selectors import server_auth_headers_by_id
from config.redis import get_redis

logger = logging.getLogger(__name__)
T = TypeVar("T")

Status = InferenceRecord.Status
REPLY_SECONDS = 60
HEADER_CACHE_SECONDS = 60
COST_PLACES = Decimal("0.000001")

_STATUS_OF = {
    "upstream_timeout": Status.TIMEOUT,
    "model_unavailable": Status.UNAVAILABLE,
}


def predict_run(envelope: dict) -> str:
    """Serve one dispatched request end to end; returns the record's status (for logs and tests)."""
    from apps.inference.services import reply_key

    schema = connection.schema_name
    request_id = envelope["request_id"]
    if time.time() >= envelope["deadline"]:
        # The web process has given up (or is about to) and records the timeout itself: calling the model
        # now would produce an answer nobody receives.
        logger.warning("request %s reached a worker after its deadline; dropped", request_id)
        return Status.TIMEOUT
    if envelope.get("stream"):
        from apps.inference.streaming import stream_run

        return stream_run(schema, envelope)
    reply, fields = _call_model(schema, envelope)
    budget_settle_for(envelope, fields)
    try:
        record_append(**fields)
        payload_keep_quietly(request_id=request_id, input_body=envelope["body"], output=reply.get("output"))
    except IntegrityError:
        logger.warning("request %s was recorded by the web process first (it stopped waiting)", request_id)
    except Exception:
        logger.exception("could not record request %s", request_id)
        reply = {
            "status": Status.FAILED,
            "code": "record_unavailable",
            "http_status": 503,
            "message": "The answer could not be recorded, so it is withheld; try again.",
            "retry_after": 5,
        }
    pipeline = get_redis().pipeline(transaction=False)
    key = reply_key(schema, request_id)
    pipeline.rpush(key, json.dumps(reply))
    # A waiting web process takes the reply within the second; an async job's stays readable until it expires.
    pipeline.expire(key, envelope.get("reply_seconds") or REPLY_SECONDS)
    pipeline.execute()
    return reply["status"]


def _call_model(schema: str, envelope: dict) -> tuple[dict, dict]:
    """Try replicas until one answers or a failure that must not be retried; returns (reply, record fields)."""
    adapter = adapter_for(envelope["protocol"])
    replica, answer, error, retry_after = with_replicas(schema, envelope, adapter.predict)
    return _outcome(envelope, replica, answer, error, retry_after)


def with_replicas(
    schema: str, envelope: dict, attempt: Callable[[UpstreamRequest], T], *, may_retry: Callable[[], bool] | None = None
) -> tuple[str, T | None, UpstreamError | None, int]:
    """Run `attempt` on a reserved replica and release it with the outcome: (replica, result, error, retry after).

    Only a connection refused before anything was sent moves on to another replica (and only while `may_retry()`
    says so); any other failure is final, since the model may have run.
    """
    remaining = list(envelope["replica_urls"])
    replica = ""
    while True:
        pick, request = replica_request(schema, envelope, remaining)
        if request is None:
            error, retry_after = pick
            return replica, None, error, retry_after
        replica = request.base_url
        try:
            result = attempt(request)
        except UpstreamError as exc:
            _release(schema, envelope, replica, healthy=isinstance(exc, UpstreamRejected))
            if isinstance(exc, UpstreamUnavailable) and not exc.sent and (may_retry is None or may_retry()):
                remaining.remove(replica)
                continue
            return replica, None, exc, 0
        _release(schema, envelope, replica, healthy=True)
        return replica, result, None, 0


def _release(schema: str, envelope: dict, replica: str, *, healthy: bool) -> None:
    replica_release(
        schema=schema, server_id=envelope["server_id"], url=replica, request_id=envelope["request_id"], healthy=healthy
    )


def replica_request(
    schema: str, envelope: dict, remaining: list[str]
) -> tuple[tuple[UpstreamError, int] | None, UpstreamRequest | None]:
    """Reserve the next replica to try and build the call to it, or say why there is none (error, retry after)."""
    seconds_left = envelope["deadline"] - time.time()
    if seconds_left <= 0:
        return (UpstreamError("upstream_timeout", "The model server did not answer in time.", 504), 0), None
    pick = replica_pick(
        schema=schema,
        server_id=envelope["server_id"],
        urls=remaining,
        request_id=envelope["request_id"],
        hold_seconds=seconds_left + 5,
    )
    if pick.url is None:
        return (UpstreamUnavailable("No replica of the model server is available.", sent=False), pick.retry_after), None
    operation = envelope.get("operation", "predict")
    request = UpstreamRequest(
        base_url=pick.url,
        model_name=envelope["model_name"],
        version=None,
        parsed=payload_parse(envelope["body"]) if operation == "predict" else None,
        timeout_seconds=seconds_left,
        headers=_auth_headers(schema, envelope["server_id"]) if envelope["auth_header"] else {},
        operation=operation,
        payload=None if operation == "predict" else envelope["body"],
    )
    return None, request


def budget_settle_for(envelope: dict, fields: dict) -> None:
    """Replace what the request reserved of its budgets with what it used (nothing reserved: nothing to do)."""
    reserved = envelope.get("reservation")
    if not reserved:
        return
    from apps.apikeys.budgets import Reservation, budget_settle

    tokens = (fields.get("prompt_tokens") or 0) + (fields.get("completion_tokens") or 0)
    try:
        budget_settle(
            Reservation(**{**reserved, "cost": Decimal(reserved["cost"])}),
            tokens=tokens,
            cost=fields.get("cost") or Decimal(0),
        )
    except Exception:  # the reservation stays counted in full: the budget errs on the safe side
        logger.exception("could not settle the budget of request %s", envelope["request_id"])


def record_fields_base(envelope: dict, replica: str) -> dict:
    """The record's fields every outcome shares, from what the web process sent along."""
    answered_at = timezone.now()
    received_at = dt.datetime.fromisoformat(envelope["received_at"])
    return {
        "request_id": envelope["request_id"],
        "key_id": envelope["key_id"],
        "key_prefix": envelope["key_prefix"],
        "user_id": envelope["user_id"],
        "client_ip": envelope["client_ip"],
        "model_name": envelope["model_name"],
        "model_version": envelope["version"],
        "alias": envelope["alias"],
        "run_id": envelope["run_id"],
        "deployment_id": envelope["deployment_id"],
        "server_replica": replica[:300],
        "received_at": received_at,
        "dispatched_at": dt.datetime.fromisoformat(envelope["dispatched_at"]),
        "answered_at": answered_at,
        "input_sha256": envelope["input_sha256"],
        "latency_ms": max(0, int((answered_at - received_at).total_seconds() * 1000)),
    }


def error_outcome(fields: dict, error: UpstreamError, retry_after: int) -> dict:
    """Fill the record's status for a failed call and return the reply that says so."""
    status = _STATUS_OF.get(error.code, Status.FAILED)
    fields.update(status=status, error_code=error.code)
    return {
        "status": status,
        "code": error.code,
        "http_status": error.status_code,
        "message": error.message,
        "retry_after": retry_after or (5 if status == Status.UNAVAILABLE else 0),
    }


def usage_fields(envelope: dict, prompt_tokens: int | None, completion_tokens: int | None, output: object) -> dict:
    """Token counts as the server reported them, else estimated (and marked so) for the OpenAI operations."""
    operation = envelope.get("operation", "predict")
    if operation == "predict" or prompt_tokens is not None:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "tokens_estimated": False}
    completion = openai_output_digest(operation, output) if operation != "embeddings" else []
    return {
        "prompt_tokens": tokens_estimate(prompt_texts(operation, envelope["body"])),
        "completion_tokens": tokens_estimate([text for text in completion if isinstance(text, str)]),
        "tokens_estimated": True,
    }


def _outcome(envelope: dict, replica: str, answer, error: UpstreamError | None, retry_after: int) -> tuple[dict, dict]:
    fields = record_fields_base(envelope, replica)
    if error is not None:
        return error_outcome(fields, error, retry_after), fields
    operation = envelope.get("operation", "predict")
    output = answer.output
    if operation != "predict" and isinstance(output, dict):
        output = {**output, "model": envelope["model_name"]}
    upstream_ms = round(answer.upstream_ms, 2)
    usage = usage_fields(envelope, answer.prompt_tokens, answer.completion_tokens, output)
    fields.update(
        status=Status.OK,
        output_sha256=output_hash(operation, output),
        upstream_ms=int(upstream_ms),
        cost=cost_of(envelope["prices"], usage, answer.upstream_ms),
        **usage,
    )
    reply = {"status": Status.OK, "output": output, "upstream_ms": upstream_ms}
    return reply, fields


def output_hash(operation: str, output: object) -> str:
    """The record's output hash: of the model's output for predict, of the texts or vectors for OpenAI answers."""
    return _output_hash(output if operation == "predict" else openai_output_digest(operation, output))


def _output_hash(output: object) -> str:
    try:
        return sha256_hex(output)
    except ValueError:  # a model answered NaN or Infinity: hash the same canonical form, with those allowed
        text = json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cost_of(prices: dict, usage: dict, upstream_ms: float) -> Decimal:
    """Per request, plus per 1k tokens (counted or estimated), plus per GPU second of upstream time."""
    cost = Decimal(prices["per_request"])
    tokens = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
    if tokens:
        cost += Decimal(prices["per_1k_tokens"]) * tokens / 1000
    cost += Decimal(prices["per_gpu_second"]) * Decimal(str(round(upstream_ms, 3))) / 1000
    return cost.quantize(COST_PLACES)


@lru_cache(maxsize=256)
def _cached_headers(schema: str, server_id: int, period: int) -> tuple[tuple[str, str], ...]:
    return tuple(server_auth_headers_by_id(server_id=server_id).items())


def _auth_headers(schema: str, server_id: int) -> dict[str, str]:
    """The server's auth header, read from the database at most once a minute per worker process."""
    return dict(_cached_headers(schema, server_id, int(time.time() // HEADER_CACHE_SECONDS)))
