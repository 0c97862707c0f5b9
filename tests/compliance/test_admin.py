"""The compliance admin: officers read records, access events and the audit log, filter and export them,
and nobody (superusers included) can change a row there, not even with a hand-made POST."""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib import admin
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import schema_context, tenant_context

from apps.accounts.models import User
from apps.compliance.models import AccessEvent, InferenceRecord, RetentionPurge
from apps.compliance.records import chain_verify, record_append
from apps.compliance.services import access_events_flush
from tests.helpers import PASSWORD, host_of, login, record_fields
from tests.platform_staff import platform_otp_login

RECORDS = "/admin/compliance/inferencerecord/"
EVENTS = "/admin/compliance/accessevent/"
AUDIT = "/admin/auditlog/logentry/"


def _enter_admin(client: Client, user, tenant) -> Client:
    """Sign `user` in on `tenant`'s host with a verified second factor, as staff roles need for the admin."""
    with tenant_context(tenant):
        client.force_login(user)
        try:
            from django_otp.plugins.otp_totp.models import TOTPDevice
        except ImportError:  # pragma: no cover - without two-factor, signing in is enough
            return client
        device = TOTPDevice.objects.create(user=user, name="test", confirmed=True)
        session = client.session
        session["otp_device_id"] = device.persistent_id
        session.save()
    return client


def _csv(response) -> list[dict[str, str]]:
    assert response.status_code == 200, response
    assert response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))


def _ids(response) -> set[str]:
    return {row["request_id"] for row in _csv(response)}


def _append(**overrides) -> InferenceRecord:
    return record_append(**record_fields(**overrides))


@pytest.fixture
def officer_a(cast, client_a) -> Client:
    return _enter_admin(client_a, cast.olivia, cast.tenant_a)


@pytest.fixture
def superuser_a(cast, in_tenant_a) -> User:
    return User.objects.create_superuser("root@alpha.example", PASSWORD)


# --- who gets in ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["olivia", "alice"])
def test_officers_and_owners_read_every_compliance_list(cast, client_a, who):
    _enter_admin(client_a, getattr(cast, who), cast.tenant_a)

    for url in (RECORDS, EVENTS, AUDIT):
        response = client_a.get(url)
        assert response.status_code == 200, url
        assert b"Export CSV" in response.content
        assert b'name="action"' not in response.content  # no bulk actions, so no delete_selected


@pytest.mark.parametrize("who", ["dave", "victor"])
def test_developers_and_viewers_get_no_admin(cast, client_a, who):
    with tenant_context(cast.tenant_a):
        client_a.force_login(getattr(cast, who))

    for url in ("/admin/", RECORDS, f"{RECORDS}export/", EVENTS, AUDIT):
        response = client_a.get(url)
        assert response.status_code == 302, url
        assert "/admin/login/" in response["Location"]


def test_officers_may_add_change_or_delete_nothing_anywhere_in_the_admin(cast, in_tenant_a):
    request = RequestFactory().get("/admin/")
    request.user = cast.olivia
    for model, model_admin in admin.site._registry.items():
        assert not model_admin.has_add_permission(request), model
        assert not model_admin.has_change_permission(request), model
        assert not model_admin.has_delete_permission(request), model


@pytest.mark.parametrize("model", [InferenceRecord, AccessEvent, LogEntry, RetentionPurge])
def test_compliance_admins_are_read_only_for_superusers_too(superuser_a, model):
    request = RequestFactory().get("/admin/")
    request.user = superuser_a
    model_admin = admin.site._registry[model]
    assert model_admin.has_view_permission(request)
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.get_actions(request) == {}


# --- crafted POSTs ------------------------------------------------------------------------------------------


@pytest.fixture
def rows_a(cast, in_tenant_a, make_key):
    """One row of each kind in tenant A: a record, an access event and an audit log entry (a key's creation)."""
    record = _append()
    event = AccessEvent.objects.create(occurred_at=timezone.now(), reason="unknown_key", method="GET", path="/x")
    key, _ = make_key()
    entry = LogEntry.objects.get_for_object(key).get()
    return {RECORDS: record, EVENTS: event, AUDIT: entry}


def _snapshot() -> dict:
    return {
        "records": list(InferenceRecord.objects.order_by("pk").values()),
        "events": list(AccessEvent.objects.order_by("pk").values()),
        "audit": list(LogEntry.objects.order_by("pk").values()),
    }


@pytest.mark.parametrize("who", ["superuser", "officer"])
@pytest.mark.parametrize("url", [RECORDS, EVENTS, AUDIT])
def test_crafted_posts_change_nothing(cast, client_a, rows_a, superuser_a, who, url):
    user = superuser_a if who == "superuser" else cast.olivia
    _enter_admin(client_a, user, cast.tenant_a)
    pk = rows_a[url].pk
    before = _snapshot()

    attempts = [
        (url, {"action": "delete_selected", "_selected_action": [pk], "post": "yes"}),
        (url, {"form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-0-id": pk, "_save": "Save"}),
        (f"{url}add/", {"reason": "login", "status": "ok", "object_repr": "forged"}),
        (f"{url}{pk}/change/", {"reason": "login", "status": "ok", "object_repr": "forged", "_save": "Save"}),
        (f"{url}{pk}/delete/", {"post": "yes"}),
    ]
    for target, data in attempts:
        response = client_a.post(target, data)
        assert response.status_code == 403, (target, response.status_code)

    with tenant_context(cast.tenant_a):
        assert _snapshot() == before
        assert chain_verify().ok


def test_the_detail_page_shows_every_field_of_a_record_read_only(cast, officer_a, in_tenant_a):
    record = _append(user_id=cast.dave.pk)

    response = officer_a.get(f"{RECORDS}{record.pk}/change/")

    assert response.status_code == 200
    body = response.content.decode()
    for value in (record.request_id, record.prev_hash, record.record_hash, record.input_sha256, cast.dave.email):
        assert value in body
    assert f">{record.sequence}<" in body
    assert 'name="request_id"' not in body
    assert 'name="_save"' not in body


# --- isolation ----------------------------------------------------------------------------------------------


def test_another_tenants_staff_never_see_alphas_rows(cast, client_b):
    with tenant_context(cast.tenant_a):
        record = _append(request_id="alpha-secret-request")
    with tenant_context(cast.tenant_b):
        assert not InferenceRecord.objects.filter(pk=record.pk).exists()
    _enter_admin(client_b, cast.charlie, cast.tenant_b)

    listing = client_b.get(RECORDS)
    assert listing.status_code == 200
    assert b"alpha-secret-request" not in listing.content
    assert client_b.get(f"{RECORDS}{record.pk}/change/").status_code == 404
    assert "alpha-secret-request" not in _ids(client_b.get(f"{RECORDS}export/"))


def test_alphas_session_does_not_open_bravos_admin(cast, officer_a):
    stolen = Client(HTTP_HOST=host_of(cast.tenant_b))
    stolen.cookies = officer_a.cookies

    response = stolen.get(RECORDS)

    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# --- filters and search -------------------------------------------------------------------------------------


@pytest.fixture
def varied(cast, in_tenant_a, make_key):
    """Records that differ in one field each, so every filter has exactly one row to find."""
    from apps.registry.models import ModelVersion, RegisteredModel

    model = RegisteredModel.objects.create(name="churn", mlflow_name="alpha.churn")
    ModelVersion.objects.create(model=model, version=5, run_id="r1", source="s3://x")
    key, _ = make_key(cast.dave)
    base = timezone.now() - dt.timedelta(days=10)
    return {
        "old": _append(request_id="req-old", received_at=base - dt.timedelta(days=30)),
        "dave": _append(request_id="req-dave", user_id=cast.dave.pk, received_at=base),
        "key": _append(request_id="req-key", key_prefix=key.prefix, received_at=base),
        "model": _append(request_id="req-model", model_name="churn", received_at=base),
        "version": _append(request_id="req-version", model_version=5, received_at=base),
        "failed": _append(request_id="req-failed", status="failed", error_code="upstream_error", received_at=base),
        "hash": _append(request_id="req-hash", input_sha256="c0ffee" + "1" * 58, received_at=base),
    }


def test_each_filter_narrows_the_list_and_its_export(cast, officer_a, varied):
    base = varied["dave"].received_at
    cases = {
        f"user_id={cast.dave.pk}": {"req-dave"},
        f"key_prefix={varied['key'].key_prefix}": {"req-key"},
        "model_name=churn": {"req-model"},
        "model_version=5": {"req-version"},
        "status=failed": {"req-failed"},
        f"received_at_to={(base - dt.timedelta(days=1)).isoformat()}": {"req-old"},
        f"received_at_from={(base - dt.timedelta(days=31)).date()}&received_at_to={base.date()}": {"req-old"},
        "q=req-fail": {"req-failed"},
        "q=C0FFEE": {"req-hash"},
        f"q={varied['hash'].input_sha256}": {"req-hash"},
        "status=failed&model_name=churn": set(),
    }
    for query, expected in cases.items():
        exported = _ids(officer_a.get(f"{RECORDS}export/", query_string_to_dict(query)))
        assert exported == expected, query
        listing = officer_a.get(RECORDS, query_string_to_dict(query)).content.decode()
        for request_id in {r.request_id for r in varied.values()}:
            assert (f">{request_id}<" in listing) == (request_id in expected), (query, request_id)

    everything = _ids(officer_a.get(f"{RECORDS}export/"))
    assert everything == {r.request_id for r in varied.values()}


def query_string_to_dict(query: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in query.split("&"))


def test_a_malformed_time_range_is_refused_not_ignored(officer_a, in_tenant_a):
    _append()
    assert officer_a.get(f"{RECORDS}export/", {"received_at_from": "yesterday"}).status_code == 400
    assert "e=1" in officer_a.get(RECORDS, {"received_at_from": "yesterday"})["Location"]


def test_access_events_filter_by_reason_user_key_and_time(cast, officer_a, in_tenant_a):
    now = timezone.now()
    AccessEvent.objects.bulk_create(
        [
            AccessEvent(occurred_at=now, reason="login", user_id=cast.dave.pk, path="/login/", request_id="ev-login"),
            AccessEvent(occurred_at=now, reason="rate_limited", key_prefix="pk_x", path="/v1/", request_id="ev-rate"),
            AccessEvent(occurred_at=now - dt.timedelta(days=3), reason="login_failed", request_id="ev-old"),
        ]
    )
    cases = {
        "reason=rate_limited": {"ev-rate"},
        f"user_id={cast.dave.pk}": {"ev-login"},
        "key_prefix=pk_x": {"ev-rate"},
        "occurred_at_to": {"ev-old"},
        "q=/v1/": {"ev-rate"},
    }
    for query, expected in cases.items():
        params = {"occurred_at_to": (now - dt.timedelta(days=1)).isoformat()} if query == "occurred_at_to" else None
        exported = _ids(officer_a.get(f"{EVENTS}export/", params or query_string_to_dict(query)))
        assert exported == expected, query


def test_the_audit_log_filters_by_object_type_actor_and_action(cast, officer_a, in_tenant_a, make_key):
    from django.contrib.contenttypes.models import ContentType

    from apps.apikeys.models import ApiKey
    from apps.apikeys.services import apikey_revoke

    key, _ = make_key(cast.alice, name="=evil()")
    apikey_revoke(actor=cast.alice, key=key)
    api_key_type = ContentType.objects.get_for_model(ApiKey)
    params = {"content_type_id": api_key_type.pk, "actor_id": cast.alice.pk, "action": LogEntry.Action.UPDATE}

    rows = _csv(officer_a.get(f"{AUDIT}export/", params))

    assert len(rows) == 1
    assert rows[0]["object_type"] == "apikeys.apikey"
    assert rows[0]["actor_email"] == cast.alice.email
    assert rows[0]["object_repr"].startswith("'=evil()")  # CSV-injection safe
    listing = officer_a.get(AUDIT, params)
    assert listing.status_code == 200
    assert b"Export CSV" in listing.content
    assert f"{AUDIT}export/?".encode() in listing.content


# --- export -------------------------------------------------------------------------------------------------


def test_export_has_a_header_every_field_and_neutralised_formulas(cast, officer_a, in_tenant_a, caplog):
    record = _append(
        user_id=cast.dave.pk, alias='=HYPERLINK("http://x")', model_name="@SUM(1)", error_code="+1", run_id="-2"
    )

    with caplog.at_level(logging.INFO, logger="apps.compliance.export"):
        response = officer_a.get(f"{RECORDS}export/", {"status": "ok"})
        (row,) = _csv(response)

    assert 'attachment; filename="inference-records-' in response["Content-Disposition"]
    assert row["request_id"] == record.request_id
    assert row["user_email"] == cast.dave.email
    assert (row["sequence"], row["prev_hash"], row["record_hash"]) == (
        str(record.sequence),
        record.prev_hash,
        record.record_hash,
    )
    assert row["alias"] == '\'=HYPERLINK("http://x")'
    assert row["model_name"] == "'@SUM(1)"
    assert row["error_code"] == "'+1"
    assert row["run_id"] == "'-2"
    assert row["cost"] == "0.001500"
    assert any(cast.olivia.email in message and "status=ok" in message for message in caplog.messages)


def test_export_takes_no_post(officer_a, in_tenant_a):
    assert officer_a.post(f"{RECORDS}export/").status_code == 405


def test_the_list_and_the_export_cost_the_same_queries_for_many_rows(cast, officer_a, in_tenant_a):
    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as context:
            response = officer_a.get(url)
            if url.endswith("export/"):
                _csv(response)
        return len(context.captured_queries)

    _append(user_id=cast.dave.pk)
    _append(user_id=cast.dave.pk)
    urls = (RECORDS, f"{RECORDS}export/", EVENTS, AUDIT)
    {url: queries(url) for url in urls}  # the first visits fill per-process caches (content types, permissions)
    few = {url: queries(url) for url in urls}
    for _ in range(20):
        _append(user_id=cast.alice.pk)
    AccessEvent.objects.bulk_create(
        [AccessEvent(occurred_at=timezone.now(), reason="login", user_id=cast.dave.pk) for _ in range(20)]
    )
    from apps.apikeys.services import apikey_create

    for n in range(5):
        apikey_create(actor=cast.alice, name=f"k{n}", scopes=["inference"])
    many = {url: queries(url) for url in urls}
    assert many == few


# --- sign-ins as access events ------------------------------------------------------------------------------


def test_logins_and_failed_logins_become_access_events(cast, client_a, in_tenant_a):
    login(client_a, cast.dave)
    Client(HTTP_HOST=host_of(cast.tenant_a)).post("/login/", {"username": "nobody@alpha.example", "password": "x"})

    assert access_events_flush() == 2
    events = {event.reason: event for event in AccessEvent.objects.all()}
    assert events["login"].user_id == cast.dave.pk
    assert events["login"].path == "/login/"
    assert events["login_failed"].detail == "username: nobody@alpha.example"
    assert events["login_failed"].client_ip


# --- the public host ----------------------------------------------------------------------------------------


@pytest.fixture
def platform_staff(db) -> User:
    with schema_context("public"):
        return User.objects.create_superuser("ops@platform.example", PASSWORD)


def test_the_public_admin_has_no_way_into_tenant_records(platform_staff, public_client):
    platform_otp_login(public_client, platform_staff)

    index = public_client.get("/admin/")
    assert index.status_code == 200
    assert b"/admin/compliance/" not in index.content
    assert b"/admin/tenants/tenant/" in index.content
    for url in (RECORDS, EVENTS, f"{RECORDS}export/", f"{EVENTS}export/"):
        assert public_client.get(url).status_code == 404, url
    assert connection.schema_name == "public"


def test_platform_staff_cannot_sign_in_to_a_tenants_admin(cast, platform_staff, public_client, client_a):
    response = client_a.post("/admin/login/", {"username": platform_staff.email, "password": PASSWORD})
    assert response.status_code == 200  # the form again, with an error: there is no such user in alpha
    assert client_a.get(RECORDS).status_code == 302

    connection.set_schema_to_public()  # client_a's request left the connection on alpha's schema
    public_client.force_login(platform_staff)
    client_a.cookies[settings.SESSION_COOKIE_NAME] = public_client.cookies[settings.SESSION_COOKIE_NAME].value
    response = client_a.get(RECORDS)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
