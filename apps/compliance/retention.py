"""Retention: purging what a tenant's policy no longer keeps, while its chain stays verifiable.

Records are purged only from the start of the chain, as one run 1..N: a record past its retention that
follows a younger one waits until that one is due too (retention is a minimum, never a maximum). Before the
run is deleted it is walked (links and hashes) and sealed in a `RetentionPurge` row, which names the hash of
its last record; the first record kept names that same hash as its predecessor, so `chain_verify` starts from
the seal and the records that remain verify exactly as before. A run that does not verify is not deleted: it
is evidence. Deletes go in batches, each its own short transaction, so appends never wait on a purge; the
database refuses a DELETE of any record no seal covers, even from this code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from apps.compliance.models import AccessEvent, InferenceRecord, RetainedPayload, RetentionPurge
from apps.compliance.payloads import encryption_available
from apps.compliance.records import GENESIS_HASH, ROW_COLUMNS, record_rows, seal_hash, seals_check, segment_walk
from apps.tenants.models import Tenant

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Run:
    """The records a purge is about to delete, as verified: their span, digest and time range."""

    first_sequence: int = 0
    through_sequence: int = 0
    through_hash: str = GENESIS_HASH
    count: int = 0
    digest: str = hashlib.sha256().hexdigest()
    oldest: dt.datetime | None = None
    newest: dt.datetime | None = None
    problem: str = ""


def _purgeable_through(*, after: int, cutoff: dt.datetime) -> int:
    """The last record of the run 1..N received before `cutoff` (`after` when nothing more is due)."""
    records = InferenceRecord.objects.filter(sequence__gt=after).order_by("sequence")
    first_kept = records.filter(received_at__gte=cutoff).values_list("sequence", flat=True).first()
    if first_kept is not None:
        return first_kept - 1
    last = records.order_by("-sequence").values_list("sequence", flat=True).first()
    return last or after


def _run_verify(*, after: int, after_hash: str, through: int) -> _Run:
    """Walk records after..through as the chain must have them, digesting their hashes in the same pass."""
    digest = hashlib.sha256()
    received = [None, None]
    received_at = ROW_COLUMNS.index("received_at")

    def each(row: tuple) -> None:
        digest.update(row[-1].encode("ascii"))
        moment = row[received_at]
        received[0] = moment if received[0] is None else min(received[0], moment)
        received[1] = moment if received[1] is None else max(received[1], moment)

    rows = record_rows().filter(sequence__gt=after, sequence__lte=through).iterator(chunk_size=5000)
    broken, expected, last_hash, count = segment_walk(rows, expected=after + 1, prev_hash=after_hash, each=each)
    if broken is not None:
        return _Run(problem=broken.problem)
    if expected != through + 1:
        return _Run(problem=f"records {expected} to {through} missing before the purge")
    return _Run(
        first_sequence=after + 1,
        through_sequence=through,
        through_hash=last_hash,
        count=count,
        digest=digest.hexdigest(),
        oldest=received[0],
        newest=received[1],
    )


def _delete_in_batches(sql: str, params: list, *, batch_size: int, purge_through: int | None = None) -> int:
    """Run a `DELETE ... LIMIT`-style statement until it deletes less than a batch; returns the rows deleted."""
    total = 0
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            if purge_through is not None:
                # The trigger lets a record go only below this mark, and only if a seal covers it.
                cursor.execute("SELECT set_config('compliance.purge_through', %s, true)", [str(purge_through)])
            cursor.execute(sql, [*params, batch_size])
            deleted = cursor.rowcount
        total += deleted
        if deleted < batch_size:
            return total


def _records_delete(through: int, *, batch_size: int) -> int:
    table = InferenceRecord._meta.db_table  # constant identifiers formatted in; values are parameters
    sql = (
        f"DELETE FROM {table} WHERE sequence IN"  # noqa: S608
        f" (SELECT sequence FROM {table} WHERE sequence <= %s ORDER BY sequence LIMIT %s)"
    )
    return _delete_in_batches(sql, [through], batch_size=batch_size, purge_through=through)


def _older_delete(model, column: str, cutoff: dt.datetime, *, batch_size: int) -> int:
    table = model._meta.db_table
    sql = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {column} < %s LIMIT %s)"  # noqa: S608
    return _delete_in_batches(sql, [cutoff], batch_size=batch_size)


def retention_purge(*, now: dt.datetime | None = None, batch_size: int | None = None) -> RetentionPurge | None:
    """Purge the current tenant's records, access events and kept payloads past their retention.

    Returns the seal of this purge, or None when nothing was due. A chain that does not verify keeps its
    records (the seal says why, and the error is logged for the operators); access events and payloads past
    their time still go, since keeping personal data longer than promised is a breach of its own.
    """
    tenant: Tenant = connection.tenant
    batch_size = batch_size or settings.RETENTION_PURGE_BATCH
    now = now or timezone.now()
    cutoff = now - dt.timedelta(days=tenant.record_retention_days)
    payload_cutoff = now - dt.timedelta(days=tenant.payload_retention_days)
    latest, problem = seals_check()
    if problem:
        logger.error("retention purge of %s withheld: %s", connection.schema_name, problem)
        return None
    after = latest.through_sequence if latest else 0
    after_hash = latest.through_hash if latest else GENESIS_HASH
    if after:
        _records_delete(after, batch_size=batch_size)  # what an interrupted purge had sealed but not yet deleted

    through = _purgeable_through(after=after, cutoff=cutoff)
    run = _run_verify(after=after, after_hash=after_hash, through=through) if through > after else _Run()
    if run.problem:
        logger.error("retention purge of %s keeps its records: %s", connection.schema_name, run.problem)
    events_due = AccessEvent.objects.filter(occurred_at__lt=cutoff).count()
    payloads_due = RetainedPayload.objects.filter(stored_at__lt=payload_cutoff).count()
    if not (run.count or events_due or payloads_due or run.problem):
        return None

    seal = RetentionPurge(
        ran_at=now,
        record_retention_days=tenant.record_retention_days,
        cutoff=cutoff,
        first_sequence=run.first_sequence,
        through_sequence=run.through_sequence if run.count else after,
        through_hash=run.through_hash if run.count else after_hash,
        records_purged=run.count,
        purged_digest=run.digest,
        oldest_received_at=run.oldest,
        newest_received_at=run.newest,
        access_events_purged=events_due,
        payload_cutoff=payload_cutoff,
        payloads_purged=payloads_due,
        records_withheld=run.problem[:300],
        prev_seal_hash=latest.seal_hash if latest else GENESIS_HASH,
    )
    seal.seal_hash = seal_hash(seal)
    seal.save(force_insert=True)

    if run.count:
        _records_delete(run.through_sequence, batch_size=batch_size)
    _older_delete(AccessEvent, "occurred_at", cutoff, batch_size=batch_size)
    _older_delete(RetainedPayload, "stored_at", payload_cutoff, batch_size=batch_size)
    return seal


def retention_policy_update(
    tenant: Tenant, *, record_retention_days: int, payload_retention: bool, payload_retention_days: int
) -> Tenant:
    """Change a tenant's retention; ValidationError names the field (six months at least, payloads need a key).

    Works on a fresh copy from the public schema: the request's tenant may be the cached routing copy.
    """
    tenant = Tenant.objects.get(pk=tenant.pk)
    tenant.record_retention_days = record_retention_days
    tenant.payload_retention = payload_retention
    tenant.payload_retention_days = payload_retention_days
    tenant.full_clean(exclude=["schema_name", "name", "plan", "status"])
    if payload_retention and not encryption_available():
        raise ValidationError(
            {"payload_retention": "Payloads cannot be kept: no PAYLOAD_ENCRYPTION_KEYS is configured on this platform."}
        )
    tenant.save(update_fields=["record_retention_days", "payload_retention", "payload_retention_days"])
    return tenant
