"""The retention page in the portal, the purge seals in the admin and the audited reading of a kept payload."""

from __future__ import annotations

import datetime as dt

import pytest
from auditlog.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.test import override_settings
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.accounts.services import user_create
from apps.compliance.models import AccessEvent, RetentionPurge
from apps.compliance.payloads import payload_keep
from apps.compliance.records import record_append
from apps.compliance.retention import retention_purge
from apps.compliance.services import access_events_flush
from apps.tenants.models import Tenant
from tests.helpers import PASSWORD, login, otp_login, record_fields

KEYS = ["r" * 40]
PAGE = "/retention/"


def _policy(tenant) -> tuple[int, bool, int]:
    fresh = Tenant.objects.get(pk=tenant.pk)
    return fresh.record_retention_days, fresh.payload_retention, fresh.payload_retention_days


def _form(days=183, keep=False, payload_days=30) -> dict:
    data = {"record_retention_days": days, "payload_retention_days": payload_days}
    if keep:
        data["payload_retention"] = "on"
    return data


# --- the page --------------------------------------------------------------------------------------------------


def test_an_owner_lengthens_the_policy_and_the_change_is_audited(cast, client_a):
    otp_login(client_a, cast.alice)

    response = client_a.post(PAGE, _form(days=400))

    assert response.status_code == 302
    assert _policy(cast.tenant_a) == (400, False, 30)
    with tenant_context(cast.tenant_a):
        entry = LogEntry.objects.filter(content_type=ContentType.objects.get_for_model(Tenant)).latest("timestamp")
        assert entry.actor_id == cast.alice.pk
        assert entry.changes_dict["record_retention_days"] == ["183", "400"]
    assert "400 days" in client_a.get(PAGE).content.decode()


def test_less_than_six_months_is_refused_with_the_reason(cast, client_a):
    otp_login(client_a, cast.alice)

    response = client_a.post(PAGE, _form(days=90))

    assert response.status_code == 422
    assert "183" in response.content.decode()
    assert _policy(cast.tenant_a) == (183, False, 30)


def test_payloads_cannot_be_kept_without_a_platform_key(cast, client_a):
    otp_login(client_a, cast.alice)

    page = client_a.get(PAGE).content.decode()
    client_a.post(PAGE, _form(keep=True))

    assert "no PAYLOAD_ENCRYPTION_KEYS" in page
    assert _policy(cast.tenant_a) == (183, False, 30)


@override_settings(PAYLOAD_ENCRYPTION_KEYS=KEYS)
def test_with_a_platform_key_an_owner_turns_payload_retention_on(cast, client_a):
    otp_login(client_a, cast.alice)

    assert client_a.post(PAGE, _form(keep=True, payload_days=14)).status_code == 302

    assert _policy(cast.tenant_a) == (183, True, 14)


def test_officers_read_the_page_but_only_owners_change_it(cast, client_a):
    otp_login(client_a, cast.olivia)

    assert client_a.get(PAGE).status_code == 200
    assert client_a.post(PAGE, _form(days=400)).status_code == 403
    assert _policy(cast.tenant_a) == (183, False, 30)


@pytest.mark.parametrize("who", ["dave", "victor"])
def test_developers_and_viewers_get_no_retention_page(cast, client_a, who):
    login(client_a, getattr(cast, who))

    assert client_a.get(PAGE).status_code == 403


def test_an_officer_without_a_second_factor_is_sent_to_verify(cast, client_a):
    login(client_a, cast.olivia)

    response = client_a.get(PAGE)

    assert response.status_code == 302
    assert "/account/two-factor/" in response["Location"]


def test_each_tenant_sees_and_changes_only_its_own_policy_and_purges(cast, client_a, client_b):
    with tenant_context(cast.tenant_a):
        record_append(**record_fields(received_at=timezone.now() - dt.timedelta(days=300)))
        record_append(**record_fields())
        retention_purge()
    otp_login(client_b, cast.charlie)

    client_b.post(PAGE, _form(days=500))
    page = client_b.get(PAGE).content.decode()

    assert _policy(cast.tenant_b)[0] == 500
    assert _policy(cast.tenant_a)[0] == 183
    assert "Nothing purged yet" in page
    otp_login(client_a, cast.alice)
    assert "records 1 to 1" in client_a.get(PAGE).content.decode()


# --- the admin ---------------------------------------------------------------------------------------------------


def test_officers_list_purge_seals_in_the_admin_read_only(cast, client_a):
    with tenant_context(cast.tenant_a):
        record_append(**record_fields(received_at=timezone.now() - dt.timedelta(days=300)))
        seal = retention_purge()
    otp_login(client_a, cast.olivia)

    listing = client_a.get("/admin/compliance/retentionpurge/")
    crafted = client_a.post(f"/admin/compliance/retentionpurge/{seal.pk}/delete/", {"post": "yes"})

    assert listing.status_code == 200
    assert f"/admin/compliance/retentionpurge/{seal.pk}/change/" in listing.content.decode()
    assert crafted.status_code == 403
    with tenant_context(cast.tenant_a):
        assert RetentionPurge.objects.filter(pk=seal.pk).exists()


@override_settings(PAYLOAD_ENCRYPTION_KEYS=KEYS)
def test_an_officer_opens_a_kept_payload_and_the_opening_is_an_access_event(cast, client_a):
    with tenant_context(cast.tenant_a):
        record = record_append(**record_fields())
        payload_keep(request_id=record.request_id, input_body={"text": "patient 4711"}, output={"label": "benign"})
    otp_login(client_a, cast.olivia)

    detail = client_a.get(f"/admin/compliance/inferencerecord/{record.pk}/change/").content.decode()
    page = client_a.get(f"/admin/compliance/inferencerecord/{record.pk}/payload/")

    assert "Open the encrypted copy" in detail
    assert page.status_code == 200
    assert "patient 4711" in page.content.decode()
    assert "benign" in page.content.decode()
    with tenant_context(cast.tenant_a):
        access_events_flush()
        event = AccessEvent.objects.get(reason=AccessEvent.Reason.PAYLOAD_VIEWED)
        assert (event.user_id, event.detail) == (cast.olivia.pk, record.request_id)


@override_settings(PAYLOAD_ENCRYPTION_KEYS=KEYS)
def test_owners_may_not_open_kept_payloads(cast, client_a):
    with tenant_context(cast.tenant_a):
        record = record_append(**record_fields())
        payload_keep(request_id=record.request_id, input_body={"text": "secret"}, output={})
    otp_login(client_a, cast.alice)

    response = client_a.get(f"/admin/compliance/inferencerecord/{record.pk}/payload/")

    assert response.status_code == 403
    assert b"secret" not in response.content


@override_settings(PAYLOAD_ENCRYPTION_KEYS=KEYS)
def test_another_tenants_officer_cannot_reach_a_payload(cast, client_b):
    with tenant_context(cast.tenant_a):
        record = record_append(**record_fields())
        payload_keep(request_id=record.request_id, input_body={"text": "alpha only"}, output={})
    with tenant_context(cast.tenant_b):
        officer = user_create(
            actor=cast.charlie, email="olga@bravo.example", password=PASSWORD, role="compliance_officer"
        )
    otp_login(client_b, officer)

    response = client_b.get(f"/admin/compliance/inferencerecord/{record.pk}/payload/")
    made_up = client_b.get("/admin/compliance/inferencerecord/999999/payload/")

    assert response.status_code == made_up.status_code == 404
    assert b"alpha only" not in response.content


def test_a_record_without_a_kept_payload_says_so(cast, client_a):
    with tenant_context(cast.tenant_a):
        record = record_append(**record_fields())
    otp_login(client_a, cast.olivia)

    detail = client_a.get(f"/admin/compliance/inferencerecord/{record.pk}/change/").content.decode()

    assert "not kept" in detail
    assert client_a.get(f"/admin/compliance/inferencerecord/{record.pk}/payload/").status_code == 404
