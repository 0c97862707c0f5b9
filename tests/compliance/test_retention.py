"""Retention: the purge of what a tenant no longer keeps, the seal that keeps its chain verifiable, and payloads."""

from __future__ import annotations

import datetime as dt

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.compliance import retention
from apps.compliance.models import AccessEvent, ChainHead, InferenceRecord, RetainedPayload, RetentionPurge
from apps.compliance.payloads import PayloadUnreadable, payload_keep, payload_read
from apps.compliance.records import chain_verify, record_append
from apps.compliance.retention import retention_policy_update, retention_purge
from apps.compliance.tasks import purge_past_retention
from apps.inference.hashing import sha256_hex
from apps.tenants.models import Tenant
from tests.helpers import db_tamper as _tamper
from tests.helpers import record_fields

NOW = timezone.now()
KEY = "k" * 40
OTHER_KEY = "o" * 40


def _append(*ages_in_days: float) -> list[InferenceRecord]:
    """One record per age, appended in the order given (so sequence order and age order may differ)."""
    return [record_append(**record_fields(received_at=NOW - dt.timedelta(days=age))) for age in ages_in_days]


def _sequences() -> list[int]:
    return list(InferenceRecord.objects.order_by("sequence").values_list("sequence", flat=True))


def _access_event(age_in_days: float) -> AccessEvent:
    return AccessEvent.objects.create(
        occurred_at=NOW - dt.timedelta(days=age_in_days), reason=AccessEvent.Reason.UNKNOWN_KEY, method="POST"
    )


# --- the purge keeps the chain verifiable --------------------------------------------------------------------


def test_purge_removes_the_expired_start_of_the_chain_and_verification_stays_green(in_tenant_a):
    records = _append(400, 300, 200, 190, 100, 1)

    seal = retention_purge(now=NOW)

    assert _sequences() == [5, 6]
    assert (seal.first_sequence, seal.through_sequence, seal.records_purged) == (1, 4, 4)
    assert seal.through_hash == records[3].record_hash == InferenceRecord.objects.get(sequence=5).prev_hash
    assert seal.cutoff == NOW - dt.timedelta(days=183)
    assert (seal.oldest_received_at, seal.newest_received_at) == (records[0].received_at, records[3].received_at)
    full = chain_verify()
    assert full.ok, full.problem
    assert (full.checked, full.purged_through, full.from_sequence, full.last_sequence) == (2, 4, 4, 6)
    assert chain_verify(since_checkpoint=True).ok


def test_the_seal_digests_exactly_the_purged_records_hashes(in_tenant_a):
    import hashlib

    records = _append(300, 250, 10)
    expected = hashlib.sha256("".join(record.record_hash for record in records[:2]).encode("ascii")).hexdigest()

    seal = retention_purge(now=NOW)

    assert seal.purged_digest == expected


def test_appends_after_a_purge_keep_verifying_and_a_second_purge_chains_its_seal(in_tenant_a):
    _append(300, 200, 5)
    first = retention_purge(now=NOW)
    _append(1, 0)

    second = retention_purge(now=NOW + dt.timedelta(days=180))

    assert (first.through_sequence, second.first_sequence, second.through_sequence) == (2, 3, 3)
    assert second.prev_seal_hash == first.seal_hash
    assert _sequences() == [4, 5]
    report = chain_verify()
    assert report.ok
    assert report.checked == 2
    assert report.purged_through == 3


def test_a_record_past_retention_waits_behind_a_younger_one(in_tenant_a):
    """Only a run from the start of the chain goes: retention is a minimum, and the chain must stay whole."""
    _append(300, 10, 300)

    seal = retention_purge(now=NOW)

    assert seal.through_sequence == 1
    assert _sequences() == [2, 3]
    assert chain_verify().ok


def test_nothing_due_writes_no_seal(in_tenant_a):
    _append(10, 1)

    assert retention_purge(now=NOW) is None
    assert not RetentionPurge.objects.exists()
    assert _sequences() == [1, 2]


def test_everything_past_retention_can_go_and_the_head_still_vouches_for_it(in_tenant_a):
    records = _append(300, 250)

    retention_purge(now=NOW)

    assert _sequences() == []
    report = chain_verify()
    assert report.ok
    assert report.purged_through == 2
    assert ChainHead.objects.get().last_hash == records[-1].record_hash
    record_append(**record_fields())
    assert chain_verify().ok


def test_longer_policy_keeps_more(in_tenant_a):
    _append(400, 300, 200)
    Tenant.objects.filter(pk=in_tenant_a.pk).update(record_retention_days=365)
    connection.tenant = Tenant.objects.get(pk=in_tenant_a.pk)

    seal = retention_purge(now=NOW)

    assert seal.through_sequence == 1
    assert _sequences() == [2, 3]


# --- what the purge refuses, and what the chain still catches ------------------------------------------------


def test_a_broken_run_is_not_purged_and_the_seal_says_why(in_tenant_a, caplog):
    _append(300, 250, 10)
    _tamper("UPDATE compliance_inferencerecord SET status = 'failed' WHERE sequence = 2")

    seal = retention_purge(now=NOW)

    assert _sequences() == [1, 2, 3]
    assert seal.records_purged == 0
    assert seal.through_sequence == 0
    assert "record 2" in seal.records_withheld
    assert "changed" in seal.records_withheld
    assert "keeps its records" in caplog.text
    assert not chain_verify().ok


def test_tampering_with_a_kept_record_after_a_purge_is_caught(in_tenant_a):
    _append(300, 250, 10, 5)
    retention_purge(now=NOW)
    _tamper("UPDATE compliance_inferencerecord SET model_version = 9 WHERE sequence = 3")

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 3


def test_deleting_kept_records_is_caught_even_behind_a_forged_looking_seal(in_tenant_a):
    _append(300, 250, 10, 5)
    retention_purge(now=NOW)
    _tamper("DELETE FROM compliance_inferencerecord WHERE sequence = 3")

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 3
    assert "missing" in report.problem


def test_an_edited_seal_is_caught(in_tenant_a):
    _append(300, 250, 10)
    retention_purge(now=NOW)
    _tamper("UPDATE compliance_retentionpurge SET records_purged = 1")

    report = chain_verify()

    assert not report.ok
    assert "retention seal" in report.problem
    assert retention_purge(now=NOW + dt.timedelta(days=30)) is None  # no purge on top of a doubtful seal


def test_a_seal_moved_forward_over_kept_records_is_caught(in_tenant_a):
    """Someone deleting kept records and rewriting the seal to cover them must recompute the seal's hash,
    and the first record left still names the real predecessor's hash."""
    _append(300, 250, 10, 5)
    retention_purge(now=NOW)
    _tamper("DELETE FROM compliance_inferencerecord WHERE sequence = 3")
    seal = RetentionPurge.objects.get()
    seal.through_sequence = 3
    from apps.compliance.records import seal_hash

    _tamper(
        "UPDATE compliance_retentionpurge SET through_sequence = 3, seal_hash = %s WHERE id = %s",
        [seal_hash(seal), seal.pk],
    )

    report = chain_verify()

    assert not report.ok
    assert report.first_broken_sequence == 4
    assert "does not follow" in report.problem


def _delete(sql: str, *, purge_through: str = "") -> None:
    """A DELETE in a transaction of its own, marked the way the purge marks its transactions."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('compliance.purge_through', %s, true)", [purge_through])
        cursor.execute(sql)


def test_the_database_lets_only_sealed_records_go_and_only_to_the_purge(in_tenant_a, monkeypatch):
    _append(300, 250, 10)
    monkeypatch.setattr(retention, "_records_delete", lambda through, batch_size: None)
    retention_purge(now=NOW)  # seals records 1 and 2 and leaves them in place

    with pytest.raises(DatabaseError, match="append-only"):
        _delete("DELETE FROM compliance_inferencerecord WHERE sequence = 3", purge_through="3")  # no seal covers 3
    with pytest.raises(DatabaseError, match="append-only"):
        _delete("DELETE FROM compliance_inferencerecord WHERE sequence = 1")  # sealed, but not the purge deleting
    with pytest.raises(DatabaseError, match="append-only"):
        _delete("DELETE FROM compliance_retentionpurge")
    with pytest.raises(DatabaseError, match="append-only"):
        _delete("TRUNCATE compliance_inferencerecord", purge_through="3")
    assert _sequences() == [1, 2, 3]

    _delete("DELETE FROM compliance_inferencerecord WHERE sequence <= 2", purge_through="2")

    assert _sequences() == [3]
    assert chain_verify().ok


def test_an_interrupted_purge_is_finished_by_the_next_one(in_tenant_a, monkeypatch):
    _append(300, 250, 240, 10)
    deletes = []
    monkeypatch.setattr(retention, "_records_delete", lambda through, batch_size: deletes.append(through))

    seal = retention_purge(now=NOW)  # sealed, then "crashed" before deleting anything

    assert deletes == [3]
    assert _sequences() == [1, 2, 3, 4]
    report = chain_verify()
    assert report.ok
    assert report.purged_through == 3
    assert report.checked == 1
    monkeypatch.undo()
    assert retention_purge(now=NOW) is None
    assert _sequences() == [4]
    assert RetentionPurge.objects.get() == seal
    assert chain_verify().ok


def test_purge_deletes_in_batches(in_tenant_a):
    _append(*([300] * 7), 1)

    with CaptureQueriesContext(connection) as queries:
        seal = retention_purge(now=NOW, batch_size=3)

    assert seal.records_purged == 7
    assert _sequences() == [8]
    deletes = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE FROM compliance_inferencerecord")
    ]
    assert len(deletes) == 3  # 3 + 3 + 1


# --- access events, payloads, audit ------------------------------------------------------------------------


def test_access_events_past_retention_go_with_the_records(in_tenant_a):
    old, young = _access_event(200), _access_event(10)

    seal = retention_purge(now=NOW)

    assert seal.access_events_purged == 1
    assert seal.records_purged == 0
    assert list(AccessEvent.objects.values_list("pk", flat=True)) == [young.pk]
    assert not AccessEvent.objects.filter(pk=old.pk).exists()


def test_every_purge_is_in_the_audit_log(in_tenant_a):
    _append(300, 10)

    seal = retention_purge(now=NOW)

    entry = LogEntry.objects.get(content_type=ContentType.objects.get_for_model(RetentionPurge), object_pk=str(seal.pk))
    assert entry.action == LogEntry.Action.CREATE
    assert entry.changes_dict["records_purged"][1] == "1"


def test_purge_stays_in_its_tenant(cast):
    with tenant_context(cast.tenant_b):
        b_records = _append(300, 250)
    with tenant_context(cast.tenant_a):
        _append(300, 10)
        retention_purge(now=NOW)
        assert _sequences() == [2]
    with tenant_context(cast.tenant_b):
        assert _sequences() == [record.sequence for record in b_records]
        assert not RetentionPurge.objects.exists()
        assert chain_verify().ok


def test_the_task_purges_the_tenant_it_runs_in(in_tenant_a):
    _append(300, 10)

    assert purge_past_retention() == 1
    assert _sequences() == [2]


# --- the policy ------------------------------------------------------------------------------------------------


def test_policy_defaults_to_six_months_and_refuses_less(in_tenant_a):
    assert Tenant().record_retention_days == 183
    assert Tenant().payload_retention is False
    with pytest.raises(ValidationError) as refused:
        retention_policy_update(
            in_tenant_a, record_retention_days=90, payload_retention=False, payload_retention_days=30
        )
    assert "record_retention_days" in refused.value.message_dict

    updated = retention_policy_update(
        in_tenant_a, record_retention_days=730, payload_retention=False, payload_retention_days=30
    )

    assert Tenant.objects.get(pk=in_tenant_a.pk).record_retention_days == updated.record_retention_days == 730


def test_payloads_cannot_outlive_their_records(in_tenant_a):
    with pytest.raises(ValidationError) as refused:
        retention_policy_update(
            in_tenant_a, record_retention_days=183, payload_retention=False, payload_retention_days=400
        )
    assert "payload_retention_days" in refused.value.message_dict


@override_settings(PAYLOAD_ENCRYPTION_KEYS=[])
def test_payload_retention_needs_a_key_from_the_environment(in_tenant_a):
    with pytest.raises(ValidationError) as refused:
        retention_policy_update(
            in_tenant_a, record_retention_days=183, payload_retention=True, payload_retention_days=30
        )
    assert "PAYLOAD_ENCRYPTION_KEYS" in str(refused.value)


def test_a_policy_change_is_audit_logged(in_tenant_a):
    retention_policy_update(in_tenant_a, record_retention_days=400, payload_retention=False, payload_retention_days=30)

    entry = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Tenant)).latest("timestamp")
    assert entry.changes_dict["record_retention_days"] == ["183", "400"]


# --- encrypted payloads ------------------------------------------------------------------------------------------


@override_settings(PAYLOAD_ENCRYPTION_KEYS=[KEY])
def test_payloads_are_encrypted_and_read_back(in_tenant_a):
    body = {"inputs": [[5.1, 3.5, 1.4, 0.2]], "note": "secret-patient-id-4711"}

    payload_keep(request_id="req-1", input_body=body, output={"predictions": [0]})

    stored = RetainedPayload.objects.get(request_id="req-1")
    assert b"secret-patient-id-4711" not in bytes(stored.ciphertext)
    kept = payload_read(request_id="req-1")
    assert kept == {"input": body, "output": {"predictions": [0]}}
    assert sha256_hex(kept["input"]) == sha256_hex(body)
    assert payload_read(request_id="never-kept") is None


def test_a_rotated_key_still_opens_old_payloads_and_a_removed_one_does_not(in_tenant_a):
    with override_settings(PAYLOAD_ENCRYPTION_KEYS=[OTHER_KEY]):
        payload_keep(request_id="req-old", input_body={"a": 1}, output=[1])
    with override_settings(PAYLOAD_ENCRYPTION_KEYS=[KEY, OTHER_KEY]):
        payload_keep(request_id="req-new", input_body={"a": 2}, output=[2])
        assert payload_read(request_id="req-old")["input"] == {"a": 1}
        assert RetainedPayload.objects.get(request_id="req-new").key_id != (
            RetainedPayload.objects.get(request_id="req-old").key_id
        )
    with override_settings(PAYLOAD_ENCRYPTION_KEYS=[KEY]), pytest.raises(PayloadUnreadable):
        payload_read(request_id="req-old")
    with override_settings(PAYLOAD_ENCRYPTION_KEYS=[]), pytest.raises(PayloadUnreadable):
        payload_read(request_id="req-new")


@override_settings(PAYLOAD_ENCRYPTION_KEYS=[KEY])
def test_payloads_are_purged_on_their_own_schedule(in_tenant_a):
    payload_keep(request_id="old", input_body={}, output={})
    payload_keep(request_id="young", input_body={}, output={})
    RetainedPayload.objects.filter(request_id="old").update(stored_at=NOW - dt.timedelta(days=31))
    _append(40)  # the record itself is kept: its retention is six months

    seal = retention_purge(now=NOW)

    assert seal.payloads_purged == 1
    assert seal.records_purged == 0
    assert list(RetainedPayload.objects.values_list("request_id", flat=True)) == ["young"]
    assert _sequences() == [1]


def test_payloads_of_one_tenant_are_invisible_to_another(cast):
    with override_settings(PAYLOAD_ENCRYPTION_KEYS=[KEY]):
        with tenant_context(cast.tenant_a):
            payload_keep(request_id="alpha-only", input_body={"x": 1}, output={})
        with tenant_context(cast.tenant_b):
            assert payload_read(request_id="alpha-only") is None
            assert not RetainedPayload.objects.exists()


# --- what a report says of retention ---------------------------------------------------------------------------


def test_a_report_after_a_purge_says_what_went_and_still_verifies(in_tenant_a):
    from apps.compliance.reports import report_build

    _append(300, 250, 10)
    retention_purge(now=NOW)

    content = report_build(start=NOW - dt.timedelta(days=400), end=NOW).content

    assert content["chain"]["ok"]
    assert content["chain"]["purged_through"] == 2
    assert content["retention"]["purged_through_sequence"] == 2
    assert content["retention"]["record_retention_days"] == 183
    assert content["retention"]["period_partly_purged"] is True
    assert content["totals"]["requests"] == 1
    recent = report_build(start=NOW - dt.timedelta(days=30), end=NOW + dt.timedelta(seconds=1)).content
    assert recent["retention"]["period_partly_purged"] is False


@override_settings(PAYLOAD_ENCRYPTION_KEYS=[KEY])
def test_a_report_says_whether_payloads_are_kept_and_for_how_many_requests(in_tenant_a):
    from apps.compliance.reports import report_build

    records = _append(1, 1, 1)
    period = {"start": NOW - dt.timedelta(days=2), "end": NOW}
    assert report_build(**period).content["data"]["payload_retention"] == "not retained"

    retention_policy_update(in_tenant_a, record_retention_days=183, payload_retention=True, payload_retention_days=14)
    for record in records[:2]:
        payload_keep(request_id=record.request_id, input_body={}, output={})
    data = report_build(**period).content["data"]

    assert data["payload_retention"] == "retained encrypted for 14 days"
    assert data["payloads_kept"] == 2
