"""Async predict jobs: what a client polls at `/api/v1/jobs/{id}`, and the sweep that settles the abandoned ones.

A job is an ordinary dispatched request that nobody waits for. Its id is the request id, and its state lives in
Redis only, with no table of its own: the compliance record is already the durable trace of the request, and a
job is just a way to fetch an answer within `INFERENCE_JOB_RESULT_SECONDS`, after which its keys expire (the
TTL is the retention schedule; nothing needs purging).

Redis layout, per tenant schema:
- `inference-job:<schema>:<id>`: a hash with the owner (`key_id` or `user_id`), model, version, alias,
  pinned, canary, deadline, created time and the record fields the sweep needs; `finished_at` and
  `latency_ms` are copied in from the record the first time a poll finds the reply. TTL: the retention.
- `inference-reply:<schema>:<id>`: the worker's reply, as for a sync request, but kept for the retention and
  read with `LINDEX` (never popped), so every poll sees it.
- `inference-started:<schema>:<id>`: set by the worker that picked a replica (`balancer.started_key`).
- `inference-jobs-due:<schema>`: job ids scored by deadline, for the sweep. A job past its deadline plus
  `INFERENCE_WORKER_GRACE_SECONDS` with no reply was lost: the sweep records it (`worker_lost` if a worker
  had started it, else `timeout`) exactly as a waiting web process would, and stores that failure as its reply.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import connection
from django.utils import timezone

from apps.api.errors import ApiError
from apps.compliance.models import InferenceRecord
from apps.inference.balancer import started_key
from config.redis import get_redis

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
SWEEP_BATCH = 200
SWEEP_MARGIN_SECONDS = 3600
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_NOT_RECORD_FIELDS = ("status", "error_code", "answered_at", "latency_ms")


@dataclass(frozen=True)
class Job:
    """A job as its owner sees it: `result` once it succeeded (the body a sync predict answers), `error` if not."""

    job_id: str
    status: str
    request_id: str
    model: str
    model_version: str
    alias: str | None
    result: dict | None
    error: dict | None
    created_at: dt.datetime
    finished_at: dt.datetime | None


def job_key(schema: str, job_id: str) -> str:
    return f"inference-job:{schema}:{job_id}"


def due_key(schema: str) -> str:
    return f"inference-jobs-due:{schema}"


def job_create(
    *,
    schema: str,
    job_id: str,
    key_id: int | None,
    user_id: int | None,
    pinned: bool,
    canary: bool,
    deadline: float,
    record: dict,
) -> None:
    """Store a job about to be dispatched; `record` holds the fields its compliance record will be written from."""
    # Never gone before the sweep could settle it, however short the retention is set.
    retention = max(settings.INFERENCE_JOB_RESULT_SECONDS, int(deadline - time.time()) + SWEEP_MARGIN_SECONDS)
    kept = {name: value for name, value in record.items() if name not in _NOT_RECORD_FIELDS}
    pipeline = get_redis().pipeline(transaction=True)
    pipeline.hset(
        job_key(schema, job_id),
        mapping={
            "key_id": "" if key_id is None else str(key_id),
            "user_id": "" if user_id is None else str(user_id),
            "model": record["model_name"],
            "model_version": str(record["model_version"]),
            "alias": record["alias"],
            "pinned": int(pinned),
            "canary": int(canary),
            "deadline": repr(deadline),
            "created_at": record["received_at"].isoformat(),
            "record": json.dumps(kept, default=dt.datetime.isoformat),
        },
    )
    pipeline.expire(job_key(schema, job_id), retention)
    pipeline.zadd(due_key(schema), {job_id: deadline})
    pipeline.expire(due_key(schema), retention)
    pipeline.execute()


def job_get(*, schema: str, job_id: str, key_id: int | None, user_id: int | None) -> Job:
    """The job, for the key (or portal user) that created it; anyone else gets the 404 an unknown id gets."""
    from apps.inference.services import reply_key

    if not _JOB_ID.match(job_id):
        raise _not_found()
    redis = get_redis()
    pipeline = redis.pipeline(transaction=False)
    pipeline.hgetall(job_key(schema, job_id))
    pipeline.lindex(reply_key(schema, job_id), 0)
    pipeline.exists(started_key(schema, job_id))
    raw, reply, started = pipeline.execute()
    meta = {name.decode(): value.decode() for name, value in raw.items()}
    if not meta or not _owned_by(meta, key_id, user_id):
        raise _not_found()
    status, result, error, finished_at = (RUNNING if started else QUEUED), None, None, None
    if reply is not None:
        reply = json.loads(reply)
        finished_at, latency_ms = _finish_noted(schema, job_id, meta)
        if reply["status"] == InferenceRecord.Status.OK:
            status, result = SUCCEEDED, _result(job_id, meta, reply, latency_ms)
        else:
            status, error = FAILED, {"code": reply["code"], "message": reply["message"]}
    return Job(
        job_id=job_id,
        status=status,
        request_id=job_id,
        model=meta["model"],
        model_version=meta["model_version"],
        alias=meta["alias"] or None,
        result=result,
        error=error,
        created_at=dt.datetime.fromisoformat(meta["created_at"]),
        finished_at=finished_at,
    )


def _owned_by(meta: dict, key_id: int | None, user_id: int | None) -> bool:
    """A key's jobs are that key's alone; a portal member's are those made in the portal, by that member."""
    if key_id is not None:
        return meta["key_id"] == str(key_id)
    return meta["key_id"] == "" and user_id is not None and meta["user_id"] == str(user_id)


def _not_found() -> ApiError:
    return ApiError("No job with this id.", code="job_not_found", status_code=404)


def _finish_noted(schema: str, job_id: str, meta: dict) -> tuple[dt.datetime, float | None]:
    """When the job ended and its total latency, from its record: read once, then kept with the job."""
    if meta.get("finished_at"):
        return dt.datetime.fromisoformat(meta["finished_at"]), float(meta["latency_ms"]) if meta["latency_ms"] else None
    record = InferenceRecord.objects.filter(request_id=job_id).values("answered_at", "latency_ms").first() or {}
    finished_at = record.get("answered_at") or timezone.now()
    latency_ms = record.get("latency_ms")
    get_redis().hset(
        job_key(schema, job_id),
        mapping={"finished_at": finished_at.isoformat(), "latency_ms": "" if latency_ms is None else latency_ms},
    )
    return finished_at, None if latency_ms is None else float(latency_ms)


def _result(job_id: str, meta: dict, reply: dict, latency_ms: float | None) -> dict:
    return {
        "output": reply["output"],
        "model": meta["model"],
        "model_version": meta["model_version"],
        "alias": meta["alias"] or None,
        "pinned": meta["pinned"] == "1",
        "canary": meta["canary"] == "1",
        "request_id": job_id,
        "latency_ms": latency_ms if latency_ms is not None else 0.0,
    }


# --- the sweep ------------------------------------------------------------------------------------------------


def jobs_due_schemas(*, schema_names: list[str], now: float | None = None) -> list[str]:
    """The schemas with a job past its deadline and grace, in one round trip (so idle tenants get no task)."""
    if not schema_names:
        return []
    cutoff = (time.time() if now is None else now) - settings.INFERENCE_WORKER_GRACE_SECONDS
    pipeline = get_redis().pipeline(transaction=False)
    for schema in schema_names:
        pipeline.zcount(due_key(schema), "-inf", cutoff)
    return [schema for schema, count in zip(schema_names, pipeline.execute(), strict=True) if count]


def jobs_sweep(*, now: float | None = None) -> int:
    """Settle the current tenant's jobs that are past their deadline and grace with no reply; returns how many.

    Nobody waits for an async job, so this does what the waiting web process does for a sync request, with the
    same code (`services.request_unanswered`): the record's unique request id settles a race with a late
    worker, and only the sweep that wrote the record stores the failure as the job's reply.
    """
    from apps.inference.services import reply_key, request_unanswered

    schema = connection.schema_name
    cutoff = (time.time() if now is None else now) - settings.INFERENCE_WORKER_GRACE_SECONDS
    redis = get_redis()
    settled = 0
    while due := [member.decode() for member in redis.zrangebyscore(due_key(schema), "-inf", cutoff, 0, SWEEP_BATCH)]:
        pipeline = redis.pipeline(transaction=False)
        for job_id in due:
            pipeline.exists(reply_key(schema, job_id))
            pipeline.hget(job_key(schema, job_id), "record")
        found = pipeline.execute()
        for position, job_id in enumerate(due):
            answered, record = found[2 * position], found[2 * position + 1]
            if not answered and record is not None:
                reply, recorded = request_unanswered(schema=schema, fields=_record_fields(record))
                if recorded:
                    _reply_store(schema, job_id, reply)
                    settled += 1
            redis.zrem(due_key(schema), job_id)
    return settled


def _record_fields(stored: bytes) -> dict:
    fields = json.loads(stored)
    for name in ("received_at", "dispatched_at"):
        if fields.get(name):
            fields[name] = dt.datetime.fromisoformat(fields[name])
    fields["answered_at"] = timezone.now()
    fields["latency_ms"] = max(0, int((fields["answered_at"] - fields["received_at"]).total_seconds() * 1000))
    return fields


def _reply_store(schema: str, job_id: str, reply: dict) -> None:
    from apps.inference.services import reply_key

    pipeline = get_redis().pipeline(transaction=False)
    pipeline.rpush(reply_key(schema, job_id), json.dumps(reply))
    pipeline.expire(reply_key(schema, job_id), settings.INFERENCE_JOB_RESULT_SECONDS)
    pipeline.execute()
