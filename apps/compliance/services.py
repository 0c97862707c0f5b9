"""The access audit of refused requests.

Refusals happen before any view and can come by the thousand (a leaked or guessed key, a bot past its
rate limit), so the request path never writes them to the database: `access_event_record` costs one
Redis round trip, and `access_events_flush` (a Celery task per tenant) writes them in bulk.
"""

import ipaddress
import json
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timedelta
from functools import cache

import psycopg
import redis
from auditlog.context import set_actor
from django.core.exceptions import ValidationError
from django.db import connection, models, transaction
from django.utils import timezone
from django_tenants.utils import get_public_schema_name, schema_context
from redis.commands.core import Script

from apps.compliance.models import AccessEvent, ComplianceReport, ComplianceReportInputHashes
from apps.inference.hashing import sha256_hex
from config.redis import get_redis

logger = logging.getLogger(__name__)

# Per tenant. Beyond it the oldest events are dropped and counted, so a flood costs Redis bounded memory.
MAX_BUFFERED_EVENTS = 10_000

# Push, then drop the oldest entries beyond the cap (ARGV[2]) and count them: one round trip, atomic.
_PUSH_SCRIPT = """
local length = redis.call('RPUSH', KEYS[1], ARGV[1])
local excess = length - tonumber(ARGV[2])
if excess > 0 then
    redis.call('LTRIM', KEYS[1], excess, -1)
    redis.call('INCRBY', KEYS[2], excess)
end
return length
"""

# PostgreSQL refuses an over-long value, and one refused row would fail the whole batch.
_MAX_LENGTHS = {
    field.name: field.max_length for field in AccessEvent._meta.concrete_fields if isinstance(field, models.CharField)
}


def buffer_key(schema_name: str) -> str:
    return f"access-events:{schema_name}"


def dropped_key(schema_name: str) -> str:
    return f"access-events-dropped:{schema_name}"


@cache
def _push_script() -> Script:
    # Registering only hashes the script; each call names its client, so tests can swap `get_redis`.
    return get_redis().register_script(_PUSH_SCRIPT)


def _clip(name: str, value: str) -> str:
    # NUL is the one character PostgreSQL text cannot hold; request paths may carry it (%00).
    return value.replace("\x00", "")[: _MAX_LENGTHS[name]]


def _ip_or_none(value: str | None) -> str | None:
    # A forged X-Forwarded-For must not make the batch fail on the inet column.
    try:
        return str(ipaddress.ip_address(value)) if value else None
    except ValueError:
        return None


def access_event_record(
    *,
    reason: str,
    method: str,
    path: str,
    client_ip: str | None,
    key_prefix: str = "",
    request_id: str = "",
    user_id: int | None = None,
    detail: str = "",
    schema_name: str | None = None,
) -> None:
    """Buffer one refused request for its tenant's audit: one Redis round trip, no query, never raises.

    The schema defaults to the current connection's; in public there is no tenant to record it in.
    When Redis is unreachable the event is lost with a warning: refusing the request matters more.
    """
    schema = schema_name or connection.schema_name
    if schema == get_public_schema_name():
        return
    event = {
        "occurred_at": timezone.now().isoformat(),
        "reason": _clip("reason", reason),
        "key_prefix": _clip("key_prefix", key_prefix),
        "client_ip": _ip_or_none(client_ip),
        "method": _clip("method", method),
        "path": _clip("path", path),
        "request_id": _clip("request_id", request_id),
        "user_id": user_id,
        "detail": _clip("detail", detail),
    }
    try:
        _push_script()(
            keys=[buffer_key(schema), dropped_key(schema)],
            args=[json.dumps(event, separators=(",", ":")), MAX_BUFFERED_EVENTS],
            client=get_redis(),
        )
    except redis.RedisError as exc:
        logger.warning("Access event for schema %s not buffered: %s: %s", schema, type(exc).__name__, exc)


def _in_schema(schema_name: str) -> AbstractContextManager:
    return nullcontext() if connection.schema_name == schema_name else schema_context(schema_name)


def _events_from(raw: list[bytes]) -> list[AccessEvent]:
    events = []
    for item in raw:
        try:
            data = json.loads(item)
            data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
            events.append(AccessEvent(**data))
        except (ValueError, KeyError, TypeError):
            logger.warning("Skipped an unreadable buffered access event.")
    return events


def _batch_write(key: str, raw: list[bytes]) -> int:
    events = _events_from(raw)
    try:
        with transaction.atomic():
            AccessEvent.objects.bulk_create(events)
    except Exception:
        # Put the batch back at the head, in order, for the next flush rather than lose it.
        get_redis().lpush(key, *reversed(raw))
        raise
    return len(events)


def _dropped_write(schema_name: str) -> int:
    dropped = int(get_redis().getdel(dropped_key(schema_name)) or 0)
    if not dropped:
        return 0
    try:
        AccessEvent.objects.create(
            occurred_at=timezone.now(),
            reason=AccessEvent.Reason.BUFFER_OVERFLOW,
            detail=f"{dropped} events dropped",
        )
    except Exception:
        get_redis().incrby(dropped_key(schema_name), dropped)
        raise
    return 1


def access_events_flush(*, schema_name: str | None = None, batch_size: int = 1000) -> int:
    """Write the tenant's buffered events into its schema in bulk; returns the rows written.

    Each batch leaves Redis in one atomic LPOP, so concurrent flushes never write an event twice, and a
    batch the database refuses goes back to the buffer. One run takes at most a full buffer's worth, so a
    flood that outpaces the inserts cannot keep a worker here forever; the next run continues.
    """
    schema = schema_name or connection.schema_name
    if schema == get_public_schema_name():
        raise ValueError("Access events live in a tenant's schema; the public schema has no table for them.")
    key = buffer_key(schema)
    written = 0
    remaining = max(MAX_BUFFERED_EVENTS, batch_size)
    with _in_schema(schema):
        while remaining > 0:
            count = min(batch_size, remaining)
            raw = get_redis().lpop(key, count) or []
            if raw:
                written += _batch_write(key, raw)
            remaining -= count
            if len(raw) < count:
                break
        written += _dropped_write(schema)
    return written


def access_events_pending(*, schema_names: list[str]) -> list[str]:
    """The schemas with buffered events or a drop count, in one round trip (so idle tenants get no task)."""
    if not schema_names:
        return []
    pipe = get_redis().pipeline(transaction=False)
    for schema in schema_names:
        pipe.exists(buffer_key(schema), dropped_key(schema))
    return [schema for schema, found in zip(schema_names, pipe.execute(), strict=True) if found]


def access_event_from_request(
    request, *, reason: str, key_prefix: str = "", user_id: int | None = None, detail: str = ""
) -> None:
    """`access_event_record` for a refused request: method, path, client IP and request id come from it."""
    from apps.api.client_ip import client_ip

    django_request = getattr(request, "_request", request)  # DRF's Request wraps Django's
    access_event_record(
        reason=reason,
        method=request.method,
        path=request.path,
        client_ip=client_ip(django_request),
        key_prefix=key_prefix,
        user_id=user_id,
        request_id=getattr(django_request, "request_id", ""),
        detail=detail,
    )


# --- compliance reports ---------------------------------------------------------------------------------------

MAX_REPORT_PERIOD = timedelta(days=400)


def report_request(
    *, actor, start: datetime, end: datetime, model_name: str = "", key_prefix: str = ""
) -> ComplianceReport:
    """Queue a report on [start, end) for the current tenant; the audit log records who asked for what.

    The task is sent only once the row is committed, so the worker never looks for a report that is not there.
    """
    if timezone.is_naive(start) or timezone.is_naive(end):
        raise ValidationError("The period needs time-zone-aware start and end.", code="invalid_period")
    if start >= end:
        raise ValidationError("The period must start before it ends.", code="invalid_period")
    if end - start > MAX_REPORT_PERIOD:
        raise ValidationError(f"A report covers at most {MAX_REPORT_PERIOD.days} days.", code="period_too_long")
    from apps.compliance.tasks import generate_compliance_report

    with transaction.atomic(), set_actor(actor):
        report = ComplianceReport.objects.create(
            period_start=start,
            period_end=end,
            model_name=(model_name or "").strip(),
            key_prefix=(key_prefix or "").strip(),
            requested_by=actor,
        )
        transaction.on_commit(lambda: generate_compliance_report.delay(report_id=report.pk))
    return report


def _report_progress(report_id: int) -> Callable[[int], None]:
    def step(percent: int) -> None:
        ComplianceReport.objects.filter(pk=report_id).update(progress=percent)

    return step


def _report_input_hashes_store(*, report_id: int, input_hashes: bytes) -> None:
    """Store a report's list of input hashes, or replace it when a duplicate delivery of the task got there first.

    A binary parameter sends the 67 MB of a million hashes as they are: through the ORM they would go as a hex
    literal twice that size, for PostgreSQL to parse.
    """
    table = ComplianceReportInputHashes._meta.db_table  # a constant identifier; values are parameters
    with connection.cursor() as cursor, psycopg.Cursor(cursor.cursor.connection) as binary:
        binary.execute(
            f"INSERT INTO {table} (report_id, hashes) VALUES (%s, %b)"  # noqa: S608
            " ON CONFLICT (report_id) DO UPDATE SET hashes = EXCLUDED.hashes",
            [report_id, input_hashes],
        )


def report_generate(*, report_id: int) -> ComplianceReport:
    """Build a queued report, store its content, SHA-256 and input hashes; idempotent (a finished report is left
    as it is).

    A failure marks the report failed with the reason instead of raising, so the portal can say what happened;
    requesting a new report is the retry. The content and the list of input hashes it vouches for are saved in
    one transaction: a report is never done without its list.
    """
    from apps.compliance.reports import report_build

    report = ComplianceReport.objects.select_related("requested_by").get(pk=report_id)
    if report.status in (ComplianceReport.Status.DONE, ComplianceReport.Status.FAILED):
        return report
    ComplianceReport.objects.filter(pk=report_id).update(status=ComplianceReport.Status.RUNNING, progress=0)
    input_hashes = None
    try:
        built = report_build(
            start=report.period_start,
            end=report.period_end,
            model_name=report.model_name or None,
            key_prefix=report.key_prefix or None,
            progress=_report_progress(report_id),
        )
        content = built.content
        content["report"] = {
            "id": report.pk,
            "requested_by": report.requested_by.email if report.requested_by else None,
            "requested_at": report.created.isoformat(),
        }
        report.content = content
        report.content_sha256 = sha256_hex(content)
        report.status = ComplianceReport.Status.DONE
        report.progress = 100
        input_hashes = built.input_hashes
    except Exception as exc:
        logger.exception("Compliance report %s in schema %s failed", report_id, connection.schema_name)
        report.status = ComplianceReport.Status.FAILED
        report.error = f"{type(exc).__name__}: {exc}"[:500]
    report.finished = timezone.now()
    try:
        with transaction.atomic():
            if input_hashes is not None:
                _report_input_hashes_store(report_id=report.pk, input_hashes=input_hashes)
            report.save(update_fields=["content", "content_sha256", "status", "progress", "error", "finished"])
    except Exception as exc:  # storing failed (the database, its limits): the report must not stay "running"
        logger.exception("Compliance report %s in schema %s could not be stored", report_id, connection.schema_name)
        ComplianceReport.objects.filter(pk=report_id).update(
            status=ComplianceReport.Status.FAILED,
            error=f"storing the report failed: {type(exc).__name__}: {exc}"[:500],
            finished=report.finished,
        )
        report.refresh_from_db()
    return report
