"""The tamper-evident inference record: an append-only, per-tenant hash chain and its verifier."""

from __future__ import annotations

import datetime as dt
import io
import itertools
import threading
import time
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from apps.compliance.models import AppendOnlyError, ChainHead, InferenceRecord
from apps.compliance.records import RECORD_FIELDS, chain_verify, record_append, record_hash
from tests.helpers import db_tamper as _tamper
from tests.helpers import record_fields

GENESIS = "0" * 64


def _fields(**overrides) -> dict:
    return record_fields(**overrides)


def _append(count: int) -> list[InferenceRecord]:
    return [record_append(**_fields()) for _ in range(count)]


def _row_hash(record: InferenceRecord) -> str:
    return record_hash({name: getattr(record, name) for name in RECORD_FIELDS}, record.prev_hash)


# --- building the chain -------------------------------------------------------------------------------------


def test_appends_build_a_linked_chain_whose_hashes_recompute(in_tenant_a):
    _append(4)

    records = list(InferenceRecord.objects.order_by("sequence"))
    assert [record.sequence for record in records] == [1, 2, 3, 4]
    assert records[0].prev_hash == GENESIS
    for previous, record in itertools.pairwise(records):
        assert record.prev_hash == previous.record_hash
    assert all(_row_hash(record) == record.record_hash for record in records)
    head = ChainHead.objects.get()
    assert (head.sequence, head.last_hash) == (4, records[-1].record_hash)


def test_record_hash_covers_every_field_and_the_previous_hash():
    fields = _fields()
    base = record_hash(fields, GENESIS)

    assert record_hash(dict(fields), GENESIS) == base
    assert record_hash(fields, "1" * 64) != base
    changes = {
        "model_version": 3,
        "status": "failed",
        "output_sha256": "c" * 64,
        "cost": Decimal("0.0016"),
        "received_at": fields["received_at"] + dt.timedelta(microseconds=1),
        "client_ip": "192.0.2.11",
        "key_id": None,
    }
    for name, value in changes.items():
        assert record_hash({**fields, name: value}, GENESIS) != base, name
    assert "id" not in RECORD_FIELDS
    assert "record_hash" not in RECORD_FIELDS
    assert "prev_hash" not in RECORD_FIELDS


def test_values_the_database_normalises_still_verify(in_tenant_a):
    paris = dt.timezone(dt.timedelta(hours=2))
    record_append(
        **_fields(
            client_ip="2001:DB8:0:0::1",
            cost=Decimal("0.5"),
            received_at=dt.datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=paris),
            dispatched_at=None,
            answered_at=None,
            status=InferenceRecord.Status.WORKER_LOST,
            output_sha256="",
            key_id=None,
            user_id=None,
        )
    )

    assert chain_verify() == chain_verify(schema_name="alpha")
    assert chain_verify().ok


def test_the_chain_head_is_created_on_first_use_if_missing(in_tenant_a):
    ChainHead.objects.all().delete()

    record = record_append(**_fields())

    assert record.sequence == 1
    assert record.prev_hash == GENESIS
    assert ChainHead.objects.get().sequence == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"request_id": ""}, "request_id"),
        ({"model_name": ""}, "model_name"),
        ({"received_at": None}, "received_at"),
        ({"status": None}, "status"),
        ({"input_sha256": ""}, "input_sha256"),
        ({"status": "exploded"}, "status"),
        ({"received_at": dt.datetime(2026, 1, 1)}, "timezone-aware"),
        ({"sequence": 5}, "assigned by the chain"),
        ({"colour": "red"}, "unknown"),
    ],
)
def test_invalid_records_are_refused_and_nothing_is_written(in_tenant_a, overrides, message):
    with pytest.raises(ValueError, match=message):
        record_append(**_fields(**overrides))

    assert not InferenceRecord.objects.exists()
    assert not ChainHead.objects.filter(sequence__gt=0).exists()


def test_append_is_one_locked_read_one_insert_one_update(in_tenant_a):
    record_append(**_fields())

    with CaptureQueriesContext(connection) as captured:
        record_append(**_fields())

    statements = [query["sql"] for query in captured if not query["sql"].startswith("SET search_path")]
    assert [sql.split()[0] for sql in statements] == ["SAVEPOINT", "SELECT", "INSERT", "UPDATE", "RELEASE"]
    assert statements[1].endswith("FOR UPDATE")


def test_append_refuses_to_run_inside_a_longer_transaction(in_tenant_a):
    with pytest.raises(RuntimeError), transaction.atomic():
        record_append(**_fields())

    assert not InferenceRecord.objects.exists()


# --- append-only, in the ORM and in the database ------------------------------------------------------------


def test_the_orm_refuses_to_change_or_delete_records(in_tenant_a):
    record = _append(1)[0]
    original = record.record_hash

    record.model_version = 99
    with pytest.raises(AppendOnlyError):
        record.save()
    with pytest.raises(AppendOnlyError):
        record.delete()
    with pytest.raises(AppendOnlyError):
        InferenceRecord.objects.filter(pk=record.pk).update(model_version=99)
    with pytest.raises(AppendOnlyError):
        InferenceRecord.objects.all().delete()
    with pytest.raises(AppendOnlyError):
        InferenceRecord.objects.update(status="failed")

    stored = InferenceRecord.objects.get()
    assert (stored.model_version, stored.record_hash) == (2, original)
    assert chain_verify().ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE compliance_inferencerecord SET model_version = 99",
        "DELETE FROM compliance_inferencerecord",
        "TRUNCATE compliance_inferencerecord",
    ],
)
def test_the_database_refuses_to_change_or_delete_records(in_tenant_a, sql):
    _append(2)

    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)

    assert list(InferenceRecord.objects.order_by("sequence").values_list("model_version", flat=True)) == [2, 2]
    assert chain_verify().ok


# --- verification -------------------------------------------------------------------------------------------


def test_an_intact_chain_verifies(in_tenant_a):
    _append(5)

    report = chain_verify()

    assert report.ok
    assert report.checked == 5
    assert report.first_broken_sequence is None
    assert report.problem == ""


def test_an_empty_chain_verifies(in_tenant_a):
    assert chain_verify() == chain_verify(schema_name="alpha")
    assert chain_verify().ok
    assert chain_verify().checked == 0


def test_an_edited_record_is_named(in_tenant_a):
    records = _append(5)
    _tamper("UPDATE compliance_inferencerecord SET model_version = 3 WHERE sequence = 3")

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 3
    assert report.checked == 2
    assert report.problem == f"record 3 (request {records[2].request_id}): contents changed after it was written"


def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_link(in_tenant_a):
    records = _append(5)
    forged = {name: getattr(records[2], name) for name in RECORD_FIELDS} | {"model_version": 3}
    _tamper(
        "UPDATE compliance_inferencerecord SET model_version = 3, record_hash = %s WHERE sequence = 3",
        [record_hash(forged, records[2].prev_hash)],
    )

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 4
    assert "does not follow record 3" in report.problem


def test_a_deleted_record_is_named(in_tenant_a):
    _append(5)
    _tamper("DELETE FROM compliance_inferencerecord WHERE sequence = 3")

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 3
    assert report.problem.startswith("record 3 missing: deleted after being written")


def test_a_deleted_tail_is_caught_by_the_chain_head(in_tenant_a):
    _append(5)
    _tamper("DELETE FROM compliance_inferencerecord WHERE sequence >= 4")

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 4
    assert report.checked == 3
    assert report.problem.startswith("records 4 to 5 missing from the end of the chain")


def test_a_reordered_pair_is_named(in_tenant_a):
    records = _append(5)
    _tamper(
        "UPDATE compliance_inferencerecord SET sequence = 1000 WHERE sequence = 2;"
        "UPDATE compliance_inferencerecord SET sequence = 2 WHERE sequence = 3;"
        "UPDATE compliance_inferencerecord SET sequence = 3 WHERE sequence = 1000;"
    )

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 2
    assert report.checked == 1
    assert report.problem.startswith(f"record 2 (request {records[2].request_id}): does not follow record 1")


def test_swapped_contents_are_named(in_tenant_a):
    _append(5)
    _tamper(
        "UPDATE compliance_inferencerecord AS r SET model_version = o.model_version + 10 "
        "FROM compliance_inferencerecord AS o WHERE r.sequence = 2 AND o.sequence = 4"
    )

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 2
    assert "contents changed" in report.problem


def test_the_command_names_the_broken_record_and_still_vouches_for_other_tenants(cast):
    with tenant_context(cast.tenant_a):
        records = _append(4)
        _tamper("UPDATE compliance_inferencerecord SET latency_ms = 1 WHERE sequence = 2")
    with tenant_context(cast.tenant_b):
        _append(2)
    out = io.StringIO()

    with pytest.raises(CommandError) as error:
        call_command("verify_audit_chain", stdout=out)

    lines = out.getvalue().splitlines()
    broken = (
        f"alpha: BROKEN at record 2: record 2 (request {records[1].request_id}): contents changed after it was written"
    )
    assert lines == [broken, "bravo: ok, 2 records"]
    assert error.value.returncode == 1
    assert "record 2" in str(error.value)
    assert "alpha" in str(error.value)


def test_the_command_checks_one_tenant_when_asked(cast):
    with tenant_context(cast.tenant_a):
        _append(3)
    with tenant_context(cast.tenant_b):
        _append(1)
        _tamper("DELETE FROM compliance_inferencerecord")
    out = io.StringIO()

    call_command("verify_audit_chain", "--tenant", "alpha", stdout=out)

    assert out.getvalue().splitlines() == ["alpha: ok, 3 records"]
    with pytest.raises(CommandError, match="bravo: BROKEN at record 1"):
        call_command("verify_audit_chain", "--tenant", "bravo", stdout=io.StringIO())
    with pytest.raises(CommandError, match="no tenant"):
        call_command("verify_audit_chain", "--tenant", "nosuch", stdout=io.StringIO())


# --- per tenant ---------------------------------------------------------------------------------------------


def test_each_tenant_has_its_own_chain(cast):
    with tenant_context(cast.tenant_a):
        a_records = _append(3)
    with tenant_context(cast.tenant_b):
        b_record = record_append(**_fields())
        assert b_record.sequence == 1
        assert b_record.prev_hash == GENESIS
        assert not InferenceRecord.objects.filter(request_id=a_records[0].request_id).exists()
        assert InferenceRecord.objects.count() == 1
    assert chain_verify(schema_name="alpha").checked == 3
    assert chain_verify(schema_name="bravo").checked == 1


def test_verifying_the_public_schema_is_refused(db):
    with pytest.raises(ValueError, match="tenant schemas"):
        chain_verify()


# --- concurrency --------------------------------------------------------------------------------------------


def test_concurrent_appends_make_one_gapless_chain(django_db_setup, django_db_blocker):
    from apps.tenants.models import Tenant

    threads_count, per_thread = 8, 25
    errors: list[BaseException] = []
    with django_db_blocker.unblock():
        tenant = Tenant.objects.get(schema_name="alpha")
        barrier = threading.Barrier(threads_count)

        def append_many() -> None:
            try:
                connection.set_tenant(tenant)
                barrier.wait()
                for _ in range(per_thread):
                    record_append(**_fields())
            except BaseException as error:
                errors.append(error)
            finally:
                connection.close()

        try:
            threads = [threading.Thread(target=append_many) for _ in range(threads_count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

            assert errors == []
            with tenant_context(tenant):
                sequences = list(InferenceRecord.objects.order_by("sequence").values_list("sequence", flat=True))
                report = chain_verify()
            assert sequences == list(range(1, threads_count * per_thread + 1))
            assert report.ok
            assert report.checked == threads_count * per_thread
        finally:
            with tenant_context(tenant):
                _tamper("DELETE FROM compliance_inferencerecord; DELETE FROM compliance_chainhead")


def _blocked_appends(tenant, fields_list: list[dict]) -> tuple[list[object], int]:
    """Append `fields_list` from one thread each while another connection holds the chain head, then let go.

    The first thread to arrive leads and waits on the lock with its own record; the rest queue behind it, so
    once the lock is released they go in as one batch. Returns each thread's outcome and the transactions used.
    """
    import apps.compliance.records as records

    outcomes: list[object] = [None] * len(fields_list)
    batches: list[int] = []
    real_insert = records._chain_insert

    def counting_insert(batch, **kwargs):
        batches.append(len(batch))
        return real_insert(batch, **kwargs)

    locked, release = threading.Event(), threading.Event()

    def hold_head() -> None:
        try:
            connection.set_tenant(tenant)
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM compliance_chainhead FOR UPDATE")
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_head)
    holder.start()
    locked.wait(30)

    def append(index: int, fields: dict) -> None:
        try:
            connection.set_tenant(tenant)
            outcomes[index] = record_append(**fields)
        except BaseException as error:
            outcomes[index] = error
        finally:
            connection.close()

    records._chain_insert = counting_insert
    try:
        threads = [threading.Thread(target=append, args=(i, f)) for i, f in enumerate(fields_list)]
        threads[0].start()
        while not records._leading:
            time.sleep(0.01)
        for thread in threads[1:]:
            thread.start()
        while sum(len(queue) for queue in records._queues.values()) < len(fields_list) - 1:  # all but the leader's
            time.sleep(0.01)
        release.set()
        for thread in threads:
            thread.join()
    finally:
        release.set()
        holder.join()
        records._chain_insert = real_insert
    return outcomes, len(batches)


@pytest.fixture
def committed_alpha(django_db_setup, django_db_blocker):
    """Tenant alpha with one committed record, for tests whose threads commit; emptied again after."""
    from apps.tenants.models import Tenant

    with django_db_blocker.unblock():
        tenant = Tenant.objects.get(schema_name="alpha")
        with tenant_context(tenant):
            first = record_append(**_fields())
        try:
            yield tenant, first
        finally:
            with tenant_context(tenant):
                _tamper("DELETE FROM compliance_inferencerecord; DELETE FROM compliance_chainhead")


def test_appends_queued_behind_a_busy_chain_go_in_as_one_batch(committed_alpha):
    tenant, _ = committed_alpha

    outcomes, transactions = _blocked_appends(tenant, [_fields() for _ in range(12)])

    assert all(isinstance(outcome, InferenceRecord) for outcome in outcomes), outcomes
    assert transactions == 2  # the leader's own record, then the 11 that queued behind it
    with tenant_context(tenant):
        assert sorted(outcome.sequence for outcome in outcomes) == list(range(2, 14))
        report = chain_verify()
    assert report.ok
    assert report.checked == 13


def test_a_request_recorded_already_fails_alone_in_its_batch(committed_alpha):
    tenant, first = committed_alpha
    fields_list = [_fields() for _ in range(6)]
    fields_list[3]["request_id"] = first.request_id

    outcomes, _ = _blocked_appends(tenant, fields_list)

    assert isinstance(outcomes[3], IntegrityError)
    assert all(isinstance(outcome, InferenceRecord) for i, outcome in enumerate(outcomes) if i != 3)
    with tenant_context(tenant):
        report = chain_verify()
    assert report.ok
    assert report.checked == 6
