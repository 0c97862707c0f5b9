"""Two-factor authentication: staff roles (owner, compliance officer) enter the admin and the reports only
with a verified TOTP device; enrolment, admin entries, wrong codes and used recovery codes are audited."""

import pytest
from auditlog.models import LogEntry
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.test import Client, RequestFactory
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.middleware import OTPMiddleware
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice
from django_tenants.utils import tenant_context
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.accounts.two_factor import SecondFactorVerified, otp_required_for_staff
from apps.api.authentication import PortalSessionAuthentication
from apps.apikeys.authentication import ApiKeyAuthentication
from apps.compliance.models import AccessEvent
from apps.compliance.services import access_events_flush
from tests.helpers import bearer, host_of, login, otp_login

ADMIN_TITLE = b"Site administration"


def code_for(device: TOTPDevice) -> str:
    return f"{totp(device.bin_key, step=device.step, t0=device.t0, digits=device.digits, drift=device.drift):06d}"


def events(tenant, reason: str) -> list[AccessEvent]:
    access_events_flush(schema_name=tenant.schema_name)
    with tenant_context(tenant):
        return list(AccessEvent.objects.filter(reason=reason))


def enrol(client: Client, tenant, user) -> list[str]:
    """The enrolment pages end to end, with the code an authenticator app would show; returns recovery codes."""
    page = client.get("/account/two-factor/?next=/admin/")
    assert page.status_code == 200
    assert b"otpauth://totp/" in page.content
    with tenant_context(tenant):
        device = TOTPDevice.objects.get(user_id=user.pk, confirmed=False)
    assert page.context["secret"] in page.content.decode()
    response = client.post("/account/two-factor/", {"code": code_for(device), "next": "/admin/"})
    assert response.status_code == 200, response.content[:500]
    return response.context["codes"]


def fresh_client(cast) -> Client:
    return Client(HTTP_HOST=host_of(cast.tenant_a))


@pytest.mark.parametrize("member", ["alice", "olivia"])
def test_staff_without_a_second_factor_is_refused_the_admin(client_a, cast, member):
    login(client_a, getattr(cast, member))

    response = client_a.get("/admin/", follow=True)

    assert response.redirect_chain[-1][0] == "/account/two-factor/?next=%2Fadmin%2F"
    assert ADMIN_TITLE not in response.content
    assert client_a.get("/admin/accounts/user/").status_code == 302
    assert ADMIN_TITLE not in client_a.get("/admin/accounts/user/", follow=True).content


def test_enrolment_end_to_end_opens_the_admin_and_is_audited(client_a, cast):
    login(client_a, cast.olivia)

    codes = enrol(client_a, cast.tenant_a, cast.olivia)

    assert len(set(codes)) == len(codes) == 10
    assert client_a.get("/admin/").status_code == 200
    assert client_a.get("/admin/accounts/user/").status_code == 200
    assert [e.user_id for e in events(cast.tenant_a, AccessEvent.Reason.TOTP_ENROLLED)] == [cast.olivia.pk]
    entries = events(cast.tenant_a, AccessEvent.Reason.ADMIN_LOGIN)
    assert [(e.user_id, e.detail) for e in entries] == [(cast.olivia.pk, "enrolment")]
    with tenant_context(cast.tenant_a):
        device = TOTPDevice.objects.get(user_id=cast.olivia.pk)
        assert device.confirmed
        logged = LogEntry.objects.get_for_object(device)
        assert logged.exists()
        assert all("key" not in (entry.changes or {}) for entry in logged)
        assert StaticToken.objects.filter(device__user_id=cast.olivia.pk).count() == 10


def test_a_second_enrolment_is_refused(client_a, cast):
    login(client_a, cast.alice)
    enrol(client_a, cast.tenant_a, cast.alice)
    other = login(fresh_client(cast), cast.alice)  # a stolen password alone must not add an authenticator

    page = other.get("/account/two-factor/")

    assert page.status_code == 200
    assert b"otpauth://" not in page.content
    with tenant_context(cast.tenant_a):
        assert TOTPDevice.objects.filter(user_id=cast.alice.pk).count() == 1


def test_a_new_sign_in_must_verify_again_with_a_totp_code(client_a, cast):
    login(client_a, cast.olivia)
    enrol(client_a, cast.tenant_a, cast.olivia)
    client = login(fresh_client(cast), cast.olivia)
    assert client.get("/admin/", follow=True).redirect_chain[-1][0] == "/account/two-factor/verify/?next=%2Fadmin%2F"
    with tenant_context(cast.tenant_a):
        device = TOTPDevice.objects.get(user_id=cast.olivia.pk)
        device.last_t = -1  # the enrolment used this 30 s step's code already
        device.save()

    response = client.post("/account/two-factor/verify/", {"code": code_for(device), "next": "/admin/"})

    assert response.status_code == 302
    assert response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200
    assert "authenticator code" in [e.detail for e in events(cast.tenant_a, AccessEvent.Reason.ADMIN_LOGIN)]


def test_a_recovery_code_works_once(client_a, cast):
    login(client_a, cast.alice)
    codes = enrol(client_a, cast.tenant_a, cast.alice)
    first = login(fresh_client(cast), cast.alice)

    response = first.post("/account/two-factor/verify/", {"code": codes[3].upper(), "next": "/admin/"})

    assert response.status_code == 302
    assert first.get("/admin/").status_code == 200
    second = login(fresh_client(cast), cast.alice)
    assert second.post("/account/two-factor/verify/", {"code": codes[3]}).status_code == 400
    assert ADMIN_TITLE not in second.get("/admin/", follow=True).content
    used = events(cast.tenant_a, AccessEvent.Reason.RECOVERY_CODE_USED)
    assert [(e.user_id, e.detail) for e in used] == [(cast.alice.pk, "9 left")]
    with tenant_context(cast.tenant_a):
        assert StaticToken.objects.filter(device__user_id=cast.alice.pk).count() == 9


def test_wrong_codes_are_refused_throttled_and_audited(client_a, cast):
    login(client_a, cast.olivia)
    enrol(client_a, cast.tenant_a, cast.olivia)
    client = login(fresh_client(cast), cast.olivia)
    with tenant_context(cast.tenant_a):
        device = TOTPDevice.objects.get(user_id=cast.olivia.pk)
        device.last_t = -1
        device.save()
    wrong = f"{(int(code_for(device)) + 1) % 1_000_000:06d}"

    statuses = [client.post("/account/two-factor/verify/", {"code": wrong}).status_code for _ in range(3)]
    right = client.post("/account/two-factor/verify/", {"code": code_for(device)})

    assert statuses == [400, 429, 429]
    assert right.status_code == 429  # even the right code waits out the back-off
    assert b"Too many wrong codes" in right.content
    assert ADMIN_TITLE not in client.get("/admin/", follow=True).content
    failed = events(cast.tenant_a, AccessEvent.Reason.TOTP_FAILED)
    assert [e.user_id for e in failed] == [cast.olivia.pk] * 4
    assert sum("throttled" in e.detail for e in failed) == 3
    assert events(cast.tenant_a, AccessEvent.Reason.ADMIN_LOGIN)[-1].detail == "enrolment"


def test_recovery_codes_are_renewed_only_from_a_verified_session(client_a, cast):
    login(client_a, cast.alice)
    old = enrol(client_a, cast.tenant_a, cast.alice)
    unverified = login(fresh_client(cast), cast.alice)
    assert unverified.post("/account/two-factor/recovery-codes/").status_code == 302

    response = client_a.post("/account/two-factor/recovery-codes/")

    new = response.context["codes"]
    assert response.status_code == 200
    assert len(new) == 10
    assert not set(new) & set(old)
    with tenant_context(cast.tenant_a):
        stored = StaticToken.objects.filter(device__user_id=cast.alice.pk).values_list("token", flat=True)
        assert set(stored) == set(new)


@pytest.mark.parametrize("member", ["dave", "victor"])
def test_developers_and_viewers_still_get_no_admin(client_a, cast, member):
    login(client_a, getattr(cast, member))

    assert ADMIN_TITLE not in client_a.get("/admin/", follow=True).content
    assert client_a.get("/account/two-factor/").status_code == 403
    with tenant_context(cast.tenant_a):
        assert not TOTPDevice.objects.filter(user_id=getattr(cast, member).pk).exists()


def test_otp_login_helper_opens_the_admin(client_a, cast):
    assert otp_login(client_a, cast.alice).get("/admin/").status_code == 200
    assert otp_login(fresh_client(cast), cast.alice).get("/admin/").status_code == 200  # the same device again


def test_a_device_enrolled_in_one_tenant_does_not_exist_in_another(client_a, client_b, cast):
    from apps.accounts.services import user_create

    otp_login(client_a, cast.alice)
    with tenant_context(cast.tenant_b):
        twin = user_create(actor=None, email=cast.alice.email, password="x-Unused-password-1", role="owner")
        assert not TOTPDevice.objects.exists()
        assert not TOTPDevice.objects.filter(user__email=cast.alice.email).exists()
    client_b.cookies = client_a.cookies  # alpha's verified session means nothing on bravo's host

    assert ADMIN_TITLE not in client_b.get("/admin/", follow=True).content
    login(client_b, cast.charlie)
    assert client_b.get("/admin/", follow=True).redirect_chain[-1][0].startswith("/account/two-factor/?")
    with tenant_context(cast.tenant_b):
        assert not TOTPDevice.objects.filter(user=twin).exists()


# --- the reusable guards, on tiny views ---------------------------------------------------------------


@otp_required_for_staff
def tiny_report(request: HttpRequest) -> HttpResponse:
    return HttpResponse("report")


class TinyReportApi(APIView):
    authentication_classes = [ApiKeyAuthentication, PortalSessionAuthentication]
    permission_classes = [IsAuthenticated, SecondFactorVerified]

    def get(self, request):
        return Response({"ok": True})


def browser_request(user=None, device: TOTPDevice | None = None, **headers) -> HttpRequest:
    """A request as the middleware leaves it: a session (verified by `device`) and django-otp's user."""
    from django.contrib.auth.models import AnonymousUser

    request = RequestFactory().get("/reports/tiny/", **headers)
    request.tenant = connection.tenant
    request.session = SessionStore()
    request.user = user or AnonymousUser()
    if device is not None:
        request.session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    OTPMiddleware(lambda r: None)(request)
    return request


def test_decorator_asks_staff_for_the_second_factor_and_lets_others_through(in_tenant_a, cast):
    assert tiny_report(browser_request())["Location"].startswith("/login/?next=")
    assert tiny_report(browser_request(cast.dave)).status_code == 200  # the view's own permission decides
    assert tiny_report(browser_request(cast.olivia))["Location"].startswith("/account/two-factor/?next=")
    device = TOTPDevice.objects.create(user=cast.olivia, name="app", confirmed=True)
    assert tiny_report(browser_request(cast.olivia))["Location"].startswith("/account/two-factor/verify/?next=")
    assert tiny_report(browser_request(cast.olivia, device)).status_code == 200
    unconfirmed = TOTPDevice.objects.create(user=cast.alice, name="app", confirmed=False)
    assert tiny_report(browser_request(cast.alice, unconfirmed)).status_code == 302


def test_drf_permission_wants_a_verified_session_but_not_for_api_keys(in_tenant_a, cast):
    from apps.apikeys.services import apikey_create

    view = TinyReportApi.as_view()
    assert view(browser_request(cast.olivia)).status_code == 403
    device = TOTPDevice.objects.create(user=cast.olivia, name="app", confirmed=True)
    assert view(browser_request(cast.olivia, device)).status_code == 200
    assert view(browser_request(cast.dave)).status_code == 200
    _, secret = apikey_create(actor=cast.alice, name="reports", scopes=["inference"])
    assert view(browser_request(**bearer(secret))).status_code == 200  # keys are not people
