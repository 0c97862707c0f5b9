"""Platform staff enter the public host's admin only with a verified second factor, on the same pages as a
tenant's staff; their devices live in the public schema, and their sign-in events are log lines, since access
events exist only in tenant schemas."""

import logging

import pytest
from auditlog.models import LogEntry
from django.db import connection
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

from apps.accounts.models import User
from apps.compliance.services import access_events_flush
from tests.helpers import PASSWORD
from tests.platform_staff import platform_login, platform_otp_login

ADMIN_TITLE = b"Site administration"
PUBLIC = get_public_schema_name()


@pytest.fixture
def platform_staff(db) -> User:
    with schema_context(PUBLIC):
        return User.objects.create_superuser("ops@platform.example", PASSWORD)


@pytest.fixture
def platform_events(caplog) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="apps.accounts.platform")
    return caplog


def code_for(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift):06d}"


def logged(caplog: pytest.LogCaptureFixture, reason: str) -> list[str]:
    prefix = f"Platform second factor: {reason} "
    messages = [record.getMessage() for record in caplog.records if record.name == "apps.accounts.platform"]
    return [message for message in messages if message.startswith(prefix)]


def enrol(client: Client, user) -> list[str]:
    """The enrolment pages on the public host, with the code an authenticator app would show."""
    page = client.get("/account/two-factor/?next=/admin/")
    assert page.status_code == 200
    assert b"otpauth://totp/" in page.content
    with schema_context(PUBLIC):
        device = TOTPDevice.objects.get(user_id=user.pk, confirmed=False)
    response = client.post("/account/two-factor/", {"code": code_for(device), "next": "/admin/"})
    assert response.status_code == 200, response.content[:500]
    return response.context["codes"]


def test_platform_staff_without_a_second_factor_are_sent_to_enrol(public_client, platform_staff):
    platform_login(public_client, platform_staff)

    response = public_client.get("/admin/", follow=True)

    assert response.redirect_chain[-1][0] == "/account/two-factor/?next=%2Fadmin%2F"
    assert response.status_code == 200
    assert b"Platform staff" in response.content  # the public wording, rendered by the portal's layout
    assert ADMIN_TITLE not in response.content
    assert public_client.get("/admin/tenants/tenant/").status_code == 302


def test_platform_enrolment_end_to_end_opens_the_admin_and_is_logged(public_client, platform_staff, platform_events):
    platform_login(public_client, platform_staff)

    codes = enrol(public_client, platform_staff)

    assert len(set(codes)) == len(codes) == 10
    assert public_client.get("/admin/").status_code == 200
    assert public_client.get("/admin/tenants/tenant/").status_code == 200
    assert len(logged(platform_events, "totp_enrolled")) == 1
    [entry] = logged(platform_events, "admin_login")
    assert f"user={platform_staff.pk} " in entry
    assert "detail='enrolment'" in entry
    with schema_context(PUBLIC):
        device = TOTPDevice.objects.get(user_id=platform_staff.pk)
        assert device.confirmed
        assert LogEntry.objects.get_for_object(device).exists()  # the public schema's own audit log
        assert StaticToken.objects.filter(device__user_id=platform_staff.pk).count() == 10


def test_platform_staff_with_an_authenticator_verify_after_each_sign_in(public_client, platform_staff, platform_events):
    platform_otp_login(Client(HTTP_HOST=public_client.defaults["HTTP_HOST"]), platform_staff)
    platform_login(public_client, platform_staff)
    assert public_client.get("/admin/", follow=True).redirect_chain[-1][0] == (
        "/account/two-factor/verify/?next=%2Fadmin%2F"
    )
    with schema_context(PUBLIC):
        device = TOTPDevice.objects.get(user_id=platform_staff.pk)
        device.last_t = -1
        device.save()
    wrong = f"{(int(code_for(device)) + 1) % 1_000_000:06d}"

    refused = public_client.post("/account/two-factor/verify/", {"code": wrong})
    device.refresh_from_db()
    device.throttle_reset()
    accepted = public_client.post("/account/two-factor/verify/", {"code": code_for(device), "next": "/admin/"})

    assert refused.status_code == 400
    assert accepted.status_code == 302
    assert public_client.get("/admin/").status_code == 200
    assert "detail='authenticator code'" in logged(platform_events, "totp_failed")[0]
    assert "detail='authenticator code'" in logged(platform_events, "admin_login")[-1]


def test_platform_staff_renew_recovery_codes_from_a_verified_session_only(public_client, platform_staff):
    platform_login(public_client, platform_staff)
    old = enrol(public_client, platform_staff)
    unverified = platform_login(Client(HTTP_HOST=public_client.defaults["HTTP_HOST"]), platform_staff)
    assert unverified.post("/account/two-factor/recovery-codes/").status_code == 302

    response = public_client.post("/account/two-factor/recovery-codes/")

    new = response.context["codes"]
    assert response.status_code == 200
    assert len(new) == 10
    assert not set(new) & set(old)
    with schema_context(PUBLIC):
        stored = StaticToken.objects.filter(device__user_id=platform_staff.pk).values_list("token", flat=True)
        assert set(stored) == set(new)


def test_a_recovery_code_lets_platform_staff_in_once(public_client, platform_staff, platform_events):
    platform_login(public_client, platform_staff)
    codes = enrol(public_client, platform_staff)
    client = platform_login(Client(HTTP_HOST=public_client.defaults["HTTP_HOST"]), platform_staff)

    response = client.post("/account/two-factor/verify/", {"code": codes[0], "next": "/admin/"})

    assert response.status_code == 302
    assert client.get("/admin/").status_code == 200
    assert "detail='9 left'" in logged(platform_events, "recovery_code_used")[0]


def test_the_pages_render_on_the_public_host(public_client, platform_staff):
    for path in ("/account/two-factor/", "/account/two-factor/verify/"):
        anonymous = public_client.get(path)
        assert anonymous.status_code == 302
        assert anonymous["Location"].startswith("/admin/login/?next=")  # the public host's only sign-in page

    platform_otp_login(public_client, platform_staff)
    page = public_client.get("/account/two-factor/")

    assert page.status_code == 200
    assert b"Your authenticator app is set up." in page.content
    assert b'action="/admin/logout/"' in page.content
    assert b"/members/" not in page.content


def test_members_pages_of_tenants_do_not_exist_on_the_public_host(public_client, platform_staff):
    platform_otp_login(public_client, platform_staff)

    assert public_client.get(f"/account/two-factor/members/{platform_staff.pk}/reset/").status_code == 404
    assert public_client.post(f"/account/two-factor/members/{platform_staff.pk}/reset/").status_code == 404
    with schema_context(PUBLIC):
        assert TOTPDevice.objects.filter(user_id=platform_staff.pk).exists()


def test_platform_devices_live_in_public_and_events_in_no_tenant(public_client, platform_staff, cast):
    platform_otp_login(public_client, platform_staff)

    for tenant in (cast.tenant_a, cast.tenant_b):
        assert access_events_flush(schema_name=tenant.schema_name) == 0  # nothing was buffered for a tenant
        with tenant_context(tenant):
            assert not TOTPDevice.objects.exists()
    assert connection.schema_name == PUBLIC
