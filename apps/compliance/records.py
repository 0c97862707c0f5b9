"""The tamper-evident inference record: appending to a tenant's hash chain and verifying it.

Each record's `record_hash` is the SHA-256 of its own columns and the previous record's hash, so changing,
removing, inserting or reordering any record breaks every link after it, and `chain_verify` names the first
broken one. The one row appends contend on is the tenant's `ChainHead`, in the tenant's own schema: tenants
never wait for each other, and inside a tenant the row lock lasts one INSERT and one UPDATE. The caller
computes everything (the model's answer, hashes, timings, cost) before calling `record_append`, so the lock
is never held across a model call or any other network round trip.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction
from django_tenants.utils import get_public_schema_name, schema_context

from apps.compliance.models import ChainCheckpoint, ChainHead, InferenceRecord, RetentionPurge
from apps.inference.hashing import sha256_hex

GENESIS_HASH = "0" * 64

# Every column the hash covers, in a fixed order; `id` is storage, the two hashes are the chain itself.
RECORD_FIELDS: tuple[str, ...] = tuple(
    field.name
    for field in InferenceRecord._meta.concrete_fields
    if field.name not in {"id", "prev_hash", "record_hash"}
)

REQUIRED_FIELDS = ("request_id", "model_name", "received_at", "status", "input_sha256")

_FIELDS = {name: InferenceRecord._meta.get_field(name) for name in RECORD_FIELDS}
_HEAD_ID = ChainHead.SINGLETON_ID


@dataclass(frozen=True)
class ChainReport:
    """The outcome of `chain_verify`: `first_broken_sequence` and `problem` describe the first broken link."""

    ok: bool
    checked: int
    first_broken_sequence: int | None = None
    problem: str = ""
    # Where the walk started: 0 from the first record, the last purged record's sequence from the chain's start
    # after a retention purge, else the checkpoint it started after (and when that checkpoint was sealed).
    from_sequence: int = 0
    checkpoint_at: dt.datetime | None = None
    last_sequence: int = 0
    last_hash: str = GENESIS_HASH
    # Records 1 to this one were purged under the retention policy; the walk starts from the seal after them.
    purged_through: int = 0


def _json_ready(name: str, value: object) -> object:
    """The value as the hash sees it: the same before the INSERT and after reading the row back."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    if isinstance(value, Decimal):
        places = Decimal(1).scaleb(-_FIELDS[name].decimal_places)
        return format(value.quantize(places), "f")
    return value


def record_hash(fields: dict, prev_hash: str) -> str:
    """The hash of one record: its `RECORD_FIELDS` (missing ones count as null) chained to `prev_hash`."""
    record = {name: _json_ready(name, fields.get(name)) for name in RECORD_FIELDS}
    return sha256_hex({"prev": prev_hash, "record": record})


def _record_build(fields: dict) -> InferenceRecord:
    chained = set(fields) & {"id", "sequence", "prev_hash", "record_hash"}
    if chained:
        raise ValueError(f"{', '.join(sorted(chained))}: assigned by the chain, not by the caller")
    unknown = set(fields) - set(RECORD_FIELDS)
    if unknown:
        raise ValueError(f"unknown inference record fields: {', '.join(sorted(unknown))}")
    missing = [name for name in REQUIRED_FIELDS if fields.get(name) in (None, "")]
    if missing:
        raise ValueError(f"inference record is missing required fields: {', '.join(missing)}")
    for name, value in fields.items():
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
    record = InferenceRecord(**fields)
    try:
        # Normalises values (IP addresses, decimals) to what the database gives back, so the hash recomputes.
        record.clean_fields(exclude=["sequence", "prev_hash", "record_hash"])
    except ValidationError as error:
        details = "; ".join(f"{name}: {' '.join(messages)}" for name, messages in error.message_dict.items())
        raise ValueError(f"invalid inference record: {details}") from error
    return record


# The table name is the model's own, never input.
_HEAD_LOCK_SQL = f'SELECT sequence, last_hash FROM "{ChainHead._meta.db_table}" WHERE id = %s FOR UPDATE'  # noqa: S608
_HEAD_MOVE_SQL = f'UPDATE "{ChainHead._meta.db_table}" SET sequence = %s, last_hash = %s WHERE id = %s'  # noqa: S608


def _head_lock() -> tuple[int, str]:
    """The tenant's chain head (sequence, last hash), locked until the surrounding transaction ends.

    Plain SQL: it runs on every append (every batch under load), and the ORM's `get_or_create` and `save` built
    their statements anew each time. Every tenant schema's migration creates the row; it is created here only if
    it is missing.
    """
    with connection.cursor() as cursor:
        cursor.execute(_HEAD_LOCK_SQL, [_HEAD_ID])
        row = cursor.fetchone()
    if row is not None:
        return row
    heads = ChainHead.objects.select_for_update()
    try:
        head, _ = heads.get_or_create(id=_HEAD_ID)
    except IntegrityError:
        # Another first append created it between our read and our insert; it is committed now.
        head = heads.get(id=_HEAD_ID)
    return head.sequence, head.last_hash


def _head_move(sequence: int, last_hash: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_HEAD_MOVE_SQL, [sequence, last_hash, _HEAD_ID])


@dataclass(eq=False)
class _Pending:
    """One record in its tenant's append queue. `wake` is set when it is finished (committed, or `error`) or when
    its thread is to lead the next batch."""

    record: InferenceRecord
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    leads: bool = False
    error: BaseException | None = None


_queue_lock = threading.Lock()
_queues: dict[str, list[_Pending]] = {}
_leading: set[str] = set()
MAX_BATCH = 500


def record_append(**fields) -> InferenceRecord:
    """Append one inference record to the current tenant's chain and return it once it is committed.

    Call it with everything already computed, outside any transaction (a RuntimeError otherwise: the chain head
    would stay locked, and the record undecided, until that transaction ends). ValueError if the fields are
    invalid, IntegrityError if the request is already recorded.

    Appends within a process are group-committed: the tenant's chain head is one row every append locks, so
    while one thread holds it, the records of the threads arriving meanwhile queue up, and the next of them
    appends them all in one transaction (one lock, one multi-row INSERT, one head update, one commit). Alone,
    a record is appended at once; under load, the lock is taken once per batch instead of once per record.
    Nobody returns before their own record is durable, so a reply sent after it never outruns its record.
    """
    record = _record_build(fields)
    blocks = connection.atomic_blocks
    if blocks and not blocks[-1]._from_testcase:
        raise RuntimeError("record_append commits on its own: call it outside any transaction")
    pending = _Pending(record)
    schema = connection.schema_name
    with _queue_lock:
        _queues.setdefault(schema, []).append(pending)
        if schema not in _leading:
            _leading.add(schema)
            pending.leads = True
    if not pending.leads:
        pending.wake.wait()
    if not pending.finished:  # it leads: from the start, or handed the lead while it waited
        _lead(schema)
    if pending.error is not None:
        raise pending.error
    return record


def _lead(schema: str) -> None:
    """Append what is queued for `schema` (this thread's record first) in one batch, then hand the lead on."""
    with _queue_lock:
        queued = _queues.get(schema, [])
        batch, _queues[schema] = queued[:MAX_BATCH], queued[MAX_BATCH:]
    try:
        _batch_append(batch)
    except BaseException as error:  # the batch was rolled back: every record of it failed alike
        for pending in batch:
            pending.error = pending.error or _copy_of(error)
    finally:
        with _queue_lock:
            waiting = _queues.get(schema)
            if waiting:
                waiting[0].leads = True
                waiting[0].wake.set()
            else:
                _queues.pop(schema, None)
                _leading.discard(schema)
        for pending in batch:
            pending.finished = True
            pending.wake.set()


def _copy_of(error: BaseException) -> BaseException:
    """An exception of the same type for each thread: one instance raised in many threads mixes tracebacks."""
    try:
        return type(error)(*error.args)
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


def _batch_append(batch: list[_Pending]) -> None:
    """Chain and insert the batch in one transaction; a request recorded already fails alone (IntegrityError)."""
    try:
        _chain_insert([pending.record for pending in batch])
    except IntegrityError:
        if len(batch) == 1:
            raise
        # Rare: a web process recorded one of these requests first (it stopped waiting). Drop only those.
        _chain_insert([pending.record for pending in batch], recorded=_already_recorded(batch))
    for pending in batch:
        if pending.record.sequence is None:
            pending.error = IntegrityError(f"request {pending.record.request_id} is already recorded")


def _already_recorded(batch: list[_Pending]) -> set[str]:
    ids = [pending.record.request_id for pending in batch]
    return set(InferenceRecord.objects.filter(request_id__in=ids).values_list("request_id", flat=True))


def _chain_insert(records: list[InferenceRecord], *, recorded: set[str] = frozenset()) -> None:
    """Give each record (but those in `recorded`) its place in the chain and insert them, head locked."""
    with transaction.atomic(durable=True):
        sequence, prev_hash = _head_lock()
        fresh, seen = [], set(recorded)
        for record in records:
            record.sequence = record.prev_hash = record.record_hash = None
            if record.request_id in seen:
                continue
            seen.add(record.request_id)
            sequence += 1
            record.sequence, record.prev_hash = sequence, prev_hash
            record.record_hash = record_hash({name: getattr(record, name) for name in RECORD_FIELDS}, prev_hash)
            prev_hash = record.record_hash
            fresh.append(record)
        if not fresh:
            return
        InferenceRecord.objects.bulk_create(fresh)
        _head_move(sequence, prev_hash)


@contextmanager
def _snapshot() -> Iterator[None]:
    """One consistent view of records and head, so appends during a long walk do not look like damage."""
    if connection.in_atomic_block:
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield


def _label(row: dict) -> str:
    return f"record {row['sequence']} (request {row['request_id']})"


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first} to {last}"


def _hasher() -> Callable[[tuple], str]:
    """`record_hash` for a row read as a tuple in `_COLUMNS` order, with one call per row instead of per column.

    Same canonical JSON as `record_hash` (keys sorted, so no `sort_keys` pass is needed): a full walk of a
    million records spends most of its time here.
    """
    names = sorted(RECORD_FIELDS)
    positions = [_COLUMNS.index(name) for name in names]
    converters = {
        name: (lambda value, name=name: _json_ready(name, value))
        for name in names
        if isinstance(_FIELDS[name], models.DateTimeField | models.DecimalField)
    }
    steps = [(name, position, converters.get(name)) for name, position in zip(names, positions, strict=True)]
    prev_at = _COLUMNS.index("prev_hash")
    dumps, sha256 = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode, hashlib.sha256

    def digest(row: tuple) -> str:
        record = {
            name: row[position] if convert is None or row[position] is None else convert(row[position])
            for name, position, convert in steps
        }
        return sha256(dumps({"prev": row[prev_at], "record": record}).encode("utf-8")).hexdigest()

    return digest


_COLUMNS: tuple[str, ...] = (*RECORD_FIELDS, "prev_hash", "record_hash")
ROW_COLUMNS = _COLUMNS
_SEQUENCE_AT = _COLUMNS.index("sequence")


def _row_check(row: tuple, expected: int, prev_hash: str, digest: Callable[[tuple], str]) -> ChainReport:
    """What is wrong with a record that does not continue the chain, given the sequence and hash expected next."""
    record = dict(zip(_COLUMNS, row, strict=True))
    sequence = record["sequence"]
    if sequence > expected:
        problem = f"{_span(expected, sequence - 1)} missing: deleted after being written ({_label(record)} comes next)"
        return ChainReport(ok=False, checked=0, first_broken_sequence=expected, problem=problem)
    if sequence < expected:
        problem = f"{_label(record)}: out of place, record {expected} was expected"
        return ChainReport(ok=False, checked=0, first_broken_sequence=expected, problem=problem)
    if record["prev_hash"] != prev_hash:
        problem = f"{_label(record)}: does not follow record {expected - 1} (records reordered or inserted)"
        return ChainReport(ok=False, checked=0, first_broken_sequence=sequence, problem=problem)
    problem = f"{_label(record)}: contents changed after it was written"
    return ChainReport(ok=False, checked=0, first_broken_sequence=sequence, problem=problem)


def segment_walk(
    rows: Iterable[tuple], *, expected: int, prev_hash: str, each: Callable[[tuple], None] | None = None
) -> tuple[ChainReport | None, int, str, int]:
    """Check that `rows` (in `_COLUMNS` order, by sequence) continue the chain from `expected` and `prev_hash`.

    Returns (the first broken link or None, the sequence expected next, the last hash, records checked);
    `each(row)` sees every intact row, which is how a purge digests what it removes in the same pass.
    """
    digest, checked = _hasher(), 0
    for row in rows:
        if row[_SEQUENCE_AT] != expected or row[-2] != prev_hash or digest(row) != row[-1]:
            return replace(_row_check(row, expected, prev_hash, digest), checked=checked), expected, prev_hash, checked
        if each is not None:
            each(row)
        checked += 1
        expected, prev_hash = expected + 1, row[-1]
    return None, expected, prev_hash, checked


def record_rows() -> models.QuerySet:
    """Every record as a tuple in `_COLUMNS` order, by sequence: what `segment_walk` reads."""
    return InferenceRecord.objects.order_by("sequence").values_list(*_COLUMNS)


def seals_check() -> tuple[RetentionPurge | None, str]:
    """The latest retention seal, once every seal still hashes to itself and names the one before it."""
    prev, latest = GENESIS_HASH, None
    for seal in RetentionPurge.objects.order_by("pk"):
        if seal.prev_seal_hash != prev or seal_hash(seal) != seal.seal_hash:
            return None, f"retention seal of {seal.ran_at:%Y-%m-%d %H:%M} changed after it was written"
        if latest is not None and seal.through_sequence < latest.through_sequence:
            return None, f"retention seal of {seal.ran_at:%Y-%m-%d %H:%M} goes back on an earlier purge"
        prev, latest = seal.seal_hash, seal
    return latest, ""


def seal_hash(seal: RetentionPurge) -> str:
    """A seal's hash: every column but the id and the hash itself, chained to the previous seal."""
    fields = {
        field.name: _json_ready(field.name, getattr(seal, field.name))
        for field in RetentionPurge._meta.concrete_fields
        if field.name not in {"id", "seal_hash"}
    }
    return sha256_hex({"prev": seal.prev_seal_hash, "seal": fields})


def _walk(checkpoint: ChainCheckpoint | None = None) -> ChainReport:
    """Walk the chain from its start (the first record, or the first one a purge left), or from just after
    `checkpoint` once its own record still matches."""
    digest = _hasher()
    rows = record_rows()
    seal, problem = seals_check()
    if problem:
        return ChainReport(ok=False, checked=0, first_broken_sequence=None, problem=problem)
    purged_through = seal.through_sequence if seal else 0
    expected, prev_hash = purged_through + 1, seal.through_hash if purged_through else GENESIS_HASH
    from_sequence, checkpoint_at = purged_through, None
    rows = rows.filter(sequence__gt=purged_through)
    if checkpoint is not None and checkpoint.sequence > purged_through:
        from_sequence, checkpoint_at = checkpoint.sequence, checkpoint.sealed_at
        row = rows.filter(sequence=checkpoint.sequence).first()
        problem = ""
        if row is None:
            problem = f"record {checkpoint.sequence}: deleted after the chain was verified up to it"
        elif row[-1] != checkpoint.record_hash or digest(row) != row[-1]:
            problem = f"record {checkpoint.sequence}: changed after the chain was verified up to it"
        if problem:
            return ChainReport(
                ok=False,
                checked=0,
                first_broken_sequence=checkpoint.sequence,
                problem=problem,
                from_sequence=from_sequence,
                checkpoint_at=checkpoint_at,
                purged_through=purged_through,
            )
        rows = rows.filter(sequence__gt=checkpoint.sequence)
        expected, prev_hash = checkpoint.sequence + 1, checkpoint.record_hash
    since = {"from_sequence": from_sequence, "checkpoint_at": checkpoint_at, "purged_through": purged_through}
    broken, expected, prev_hash, checked = segment_walk(
        rows.iterator(chunk_size=5000), expected=expected, prev_hash=prev_hash
    )
    if broken is not None:
        return replace(broken, **since)

    last = expected - 1
    head = ChainHead.objects.filter(id=ChainHead.SINGLETON_ID).first()
    head_sequence, head_hash = (head.sequence, head.last_hash) if head else (0, GENESIS_HASH)
    if head_sequence > last:
        problem = f"{_span(last + 1, head_sequence)} missing from the end of the chain: deleted after being written"
        return ChainReport(ok=False, checked=checked, first_broken_sequence=last + 1, problem=problem, **since)
    if head_sequence < last:
        problem = f"{_span(head_sequence + 1, last)} added outside the chain (its head is at {head_sequence})"
        return ChainReport(ok=False, checked=checked, first_broken_sequence=head_sequence + 1, problem=problem, **since)
    if head_hash != prev_hash:
        problem = f"record {last}: its hash does not match the chain head (replaced after being written)"
        return ChainReport(ok=False, checked=checked, first_broken_sequence=last, problem=problem, **since)
    return ChainReport(ok=True, checked=checked, last_sequence=last, last_hash=prev_hash, **since)


def chain_verify(*, schema_name: str | None = None, since_checkpoint: bool = False) -> ChainReport:
    """Walk a tenant's records in order (the current schema, or `schema_name`) and report the first broken link.

    Checks that sequences run 1, 2, 3 … (a gap is a deleted record), that each record names the previous
    record's hash (else records were reordered or inserted), that each hash recomputes from the row (else it
    was edited), and that the chain head matches the last record (else the tail was deleted).

    By default the walk starts at the chain's start: the first record, or after a retention purge the first
    record kept, linked to the purge's seal (and every seal is checked). With `since_checkpoint` it starts
    after the latest `ChainCheckpoint` (a full walk when there is none), which costs only the records appended
    since, but cannot see a change to records before that checkpoint other than its own: run a full walk for
    that. Every walk that ends intact and reaches a record no checkpoint names yet (or any full walk) seals a
    new checkpoint.
    """
    context = schema_context(schema_name) if schema_name else nullcontext()
    with context:
        if connection.schema_name == get_public_schema_name():
            raise ValueError("the inference record lives in tenant schemas; name one")
        with _snapshot():
            checkpoint = ChainCheckpoint.objects.order_by("-sequence", "-pk").first() if since_checkpoint else None
            report = _walk(checkpoint)
        if report.ok and report.last_sequence and (checkpoint is None or report.last_sequence > checkpoint.sequence):
            ChainCheckpoint.objects.create(
                sequence=report.last_sequence, record_hash=report.last_hash, walked_from=report.from_sequence
            )
        return report
