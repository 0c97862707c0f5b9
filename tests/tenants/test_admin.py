"""Platform staff use the admin on the public host to list and suspend tenants, after a second factor; that admin
holds only what lives in the public schema, and nothing of it opens a tenant's records."""

import pytest
from auditlog.models import LogEntry
from django.conf import settings
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client
from django_tenants.utils import get_public_schema_name, schema_context, tenant_context

from apps.accounts.admin_site import public_admin_site
from apps.accounts.models import User
from apps.accounts.services import user_create
from apps.tenants.models import Tenant
from tests.helpers import PASSWORD, host_of, otp_login
from tests.platform_staff import platform_login, platform_otp_login

ADMIN_TITLE = b"Site administration"
TENANT_ONLY_APPS = {"apikeys", "registry", "serving", "inference", "compliance", "api", "portal"}
TENANT_ADMIN_URLS = [
    "/admin/compliance/",
    "/admin/compliance/inferencerecord/",
    "/admin/compliance/inferencerecord/export/",
    "/admin/compliance/inferencerecord/1/change/",
    "/admin/compliance/accessevent/",
    "/admin/compliance/accessevent/export/",
    "/admin/compliance/compliancereport/",
    "/admin/apikeys/apikey/",
    "/admin/apikeys/apikey/1/change/",
    "/admin/registry/registeredmodel/",
    "/admin/serving/deployment/",
]


@pytest.fixture
def staff(db) -> User:
    with schema_context(get_public_schema_name()):
        return User.objects.create_superuser(email="ops@platform.example", password=PASSWORD)


@pytest.fixture
def staff_client(public_client, staff):
    platform_otp_login(public_client, staff)
    public_client.staff = staff
    return public_client


def test_platform_staff_list_tenants_without_the_public_one(staff_client, cast):
    page = staff_client.get("/admin/tenants/tenant/")
    assert page.status_code == 200
    assert b"Alpha Inc" in page.content
    assert b"Bravo Ltd" in page.content
    assert b"Platform" not in page.content.split(b'id="result_list"')[1]


def test_platform_staff_suspend_a_tenant_and_it_is_audited(staff_client, cast):
    response = staff_client.post(
        "/admin/tenants/tenant/",
        {"action": "suspend", "_selected_action": [cast.tenant_a.pk]},
        follow=True,
    )
    assert b"Suspended 1 tenant" in response.content
    tenant = Tenant.objects.get(pk=cast.tenant_a.pk)
    assert tenant.status == Tenant.Status.SUSPENDED
    entry = LogEntry.objects.get_for_object(tenant).latest("timestamp")
    assert entry.actor_id == staff_client.staff.pk
    assert entry.changes_dict["status"] == ["active", "suspended"]
    assert Client(HTTP_HOST=host_of(cast.tenant_a)).get("/login/").status_code == 403
    assert Tenant.objects.get(pk=cast.tenant_b.pk).status == Tenant.Status.ACTIVE


def test_tenants_cannot_be_added_or_deleted_from_the_admin(staff_client, cast):
    assert staff_client.get("/admin/tenants/tenant/add/").status_code == 403
    assert staff_client.get(f"/admin/tenants/tenant/{cast.tenant_a.pk}/delete/").status_code == 403


def test_platform_staff_without_a_verified_second_factor_cannot_suspend(public_client, staff, cast):
    platform_login(public_client, staff)

    suspend = {"action": "suspend", "_selected_action": [cast.tenant_a.pk]}
    response = public_client.post("/admin/tenants/tenant/", suspend)

    assert response.status_code == 302
    assert Tenant.objects.get(pk=cast.tenant_a.pk).status == Tenant.Status.ACTIVE
    assert ADMIN_TITLE not in public_client.get("/admin/", follow=True).content


def test_tenant_owner_has_no_access_to_the_platform_admin(cast):
    client = Client(HTTP_HOST="localhost")
    response = client.post("/admin/login/", {"username": cast.alice.email, "password": PASSWORD})
    assert response.status_code == 200  # the login form again: alice exists only in tenant A
    assert "_auth_user_id" not in client.session


# --- the public admin has no way into a tenant's records ------------------------------------------------------


def test_the_public_admin_registers_only_models_of_the_public_schema():
    registered = {f"{model._meta.app_label}.{model._meta.model_name}" for model in public_admin_site()._registry}

    assert {"tenants.tenant", "accounts.user", "auditlog.logentry", "otp_totp.totpdevice"} <= registered
    assert not {label.split(".")[0] for label in registered} & TENANT_ONLY_APPS


def test_tenant_models_are_not_found_in_the_public_admin(staff_client, client_a, cast):
    index = staff_client.get("/admin/")
    assert index.status_code == 200
    assert b"/admin/tenants/tenant/" in index.content
    for app in TENANT_ONLY_APPS:
        assert f"/admin/{app}/".encode() not in index.content

    for url in TENANT_ADMIN_URLS:
        assert staff_client.get(url).status_code == 404, url
        assert staff_client.post(url).status_code == 404, url

    otp_login(client_a, cast.alice)  # the same addresses are a tenant's own admin on its host
    assert client_a.get("/admin/compliance/accessevent/").status_code == 200
    assert client_a.get("/admin/apikeys/apikey/").status_code == 200


def test_the_public_audit_log_holds_no_tenant_entries(staff_client, client_a, cast):
    with tenant_context(cast.tenant_a):
        user_create(actor=cast.alice, email="zed@alpha.example", password=None, role="viewer")
    connection.set_schema_to_public()

    public_log = staff_client.get("/admin/auditlog/logentry/?q=zed")
    otp_login(client_a, cast.alice)
    tenant_log = client_a.get("/admin/auditlog/logentry/?q=zed")

    assert public_log.status_code == tenant_log.status_code == 200
    assert b"zed@alpha.example" not in public_log.content
    assert b"zed@alpha.example" in tenant_log.content


def test_a_platform_session_opens_no_tenant_admin(staff_client, client_a, cast):
    session_key = staff_client.cookies[settings.SESSION_COOKIE_NAME].value
    assert staff_client.get("/admin/").status_code == 200
    client_a.cookies[settings.SESSION_COOKIE_NAME] = session_key  # as if the browser sent it to alpha's host

    response = client_a.get("/admin/compliance/accessevent/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")
    with tenant_context(cast.tenant_a):
        assert not Session.objects.filter(session_key=session_key).exists()
        assert not User.objects.filter(email=staff_client.staff.email).exists()
    login = client_a.post("/admin/login/", {"username": staff_client.staff.email, "password": PASSWORD})
    assert login.status_code == 200  # the form again: there is no such user in alpha
    assert client_a.get("/admin/compliance/accessevent/").status_code == 302


def test_a_sign_in_without_next_on_the_public_host_lands_in_the_admin(staff, public_client):
    """The login view falls back to LOGIN_REDIRECT_URL; on the public host that name leads to the admin."""
    response = public_client.post("/admin/login/", {"username": staff.email, "password": PASSWORD})

    assert response.status_code == 302
    assert public_client.get(response["Location"]).status_code == 302  # on to the admin, which asks the factor
    assert public_client.get("/login/?next=/admin/")["Location"] == "/admin/login/?next=/admin/"


def test_platform_staff_see_a_tenants_retention_but_cannot_change_it(staff_client, cast):
    url = f"/admin/tenants/tenant/{cast.tenant_a.pk}/change/"
    page = staff_client.get(url).content.decode()
    staff_client.post(
        url,
        {
            "name": cast.tenant_a.name,
            "plan": cast.tenant_a.plan,
            "status": "active",
            "record_retention_days": "3000",
            "domains-TOTAL_FORMS": "0",
            "domains-INITIAL_FORMS": "0",
        },
    )

    assert "183" in page
    assert 'name="record_retention_days"' not in page
    assert Tenant.objects.get(pk=cast.tenant_a.pk).record_retention_days == 183
