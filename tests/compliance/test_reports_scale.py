"""Chain checkpoints: a report verifies only what was appended since the last verified point, and still notices
tampering with that point's record or anything after it; a full walk still notices tampering before it."""

from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.compliance.models import ChainCheckpoint
from apps.compliance.records import chain_verify, record_append
from apps.compliance.reports import report_build
from apps.inference.hashing import sha256_hex
from tests.helpers import db_tamper as _tamper
from tests.helpers import record_fields


def _append(count: int) -> None:
    base = timezone.now() - timedelta(hours=1)
    for index in range(count):
        record_append(**record_fields(received_at=base + timedelta(seconds=index)))


@pytest.fixture
def sealed(in_tenant_a):
    """Five records verified by a full walk (which seals a checkpoint at 5), then three more appended."""
    _append(5)
    assert chain_verify().ok
    _append(3)


def test_a_full_walk_seals_a_checkpoint_at_the_head(in_tenant_a):
    _append(4)

    report = chain_verify()

    assert (report.ok, report.checked, report.from_sequence) == (True, 4, 0)
    checkpoint = ChainCheckpoint.objects.get()
    assert (checkpoint.sequence, checkpoint.walked_from) == (4, 0)


def test_a_walk_since_the_checkpoint_checks_only_the_records_appended_after_it(sealed):
    report = chain_verify(since_checkpoint=True)

    assert (report.ok, report.checked, report.from_sequence) == (True, 3, 5)
    assert report.checkpoint_at is not None
    assert ChainCheckpoint.objects.first().sequence == 8


def test_without_a_checkpoint_the_walk_starts_at_the_first_record(in_tenant_a):
    _append(3)

    report = chain_verify(since_checkpoint=True)

    assert (report.ok, report.checked, report.from_sequence) == (True, 3, 0)


def test_an_edit_after_the_checkpoint_is_caught_and_seals_nothing(sealed):
    _tamper("UPDATE compliance_inferencerecord SET model_version = 9 WHERE sequence = 7")

    report = chain_verify(since_checkpoint=True)

    assert (report.ok, report.first_broken_sequence, report.from_sequence) == (False, 7, 5)
    assert "contents changed" in report.problem
    assert list(ChainCheckpoint.objects.values_list("sequence", flat=True)) == [5]


def test_an_edit_of_the_checkpoint_record_itself_is_caught(sealed):
    _tamper("UPDATE compliance_inferencerecord SET model_version = 9 WHERE sequence = 5")

    report = chain_verify(since_checkpoint=True)

    assert (report.ok, report.first_broken_sequence) == (False, 5)
    assert "changed after the chain was verified" in report.problem


def test_deleting_the_checkpoint_record_is_caught(sealed):
    _tamper("DELETE FROM compliance_inferencerecord WHERE sequence >= 5")

    report = chain_verify(since_checkpoint=True)

    assert (report.ok, report.first_broken_sequence) == (False, 5)
    assert "deleted" in report.problem


def test_an_edit_before_the_checkpoint_needs_a_full_walk(sealed):
    _tamper("UPDATE compliance_inferencerecord SET model_version = 9 WHERE sequence = 2")

    assert chain_verify(since_checkpoint=True).ok
    full = chain_verify()

    assert (full.ok, full.first_broken_sequence, full.from_sequence) == (False, 2, 0)


def test_the_report_says_which_checkpoint_its_verification_started_from(sealed):
    start = timezone.now() - timedelta(days=1)

    chain = report_build(start=start, end=timezone.now() + timedelta(days=1)).content["chain"]

    assert (chain["ok"], chain["checked"], chain["from_sequence"], chain["head_sequence"]) == (True, 3, 5, 8)
    assert chain["checkpoint_verified_at"] is not None


def test_a_report_over_an_empty_period_has_zero_totals(in_tenant_a):
    start = timezone.now() + timedelta(days=10)

    built = report_build(start=start, end=start + timedelta(days=1))

    assert built.content["totals"] == {"requests": 0, "ok": 0, "refused": 0}
    assert built.input_hashes == b"[]"
    assert built.content["data"]["input_hash_count"] == 0
    assert built.content["data"]["input_hashes_sha256"] == sha256_hex([])
    assert built.content["usage"]["by_user"] == []


def test_the_daily_full_walk_catches_an_edit_before_the_checkpoint(cast, caplog):
    from django_tenants.utils import tenant_context

    from apps.compliance.tasks import verify_chain

    with tenant_context(cast.tenant_a):
        for _ in range(3):
            record_append(**record_fields())
        assert chain_verify().ok  # seals a checkpoint at the head
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = replica")
            cursor.execute("UPDATE compliance_inferencerecord SET latency_ms = 999 WHERE sequence = 1")
            cursor.execute("RESET session_replication_role")
        assert chain_verify(since_checkpoint=True).ok  # the quick walk starts after the edit
        assert verify_chain.run() is False
    assert "broken at record 1" in caplog.text
