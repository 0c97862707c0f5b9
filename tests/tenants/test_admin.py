"""Platform staff use the admin on the public host to list and suspend tenants."""

import pytest
from auditlog.models import LogEntry
from django.test import Client

from apps.accounts.models import User
from apps.tenants.models import Tenant
from tests.helpers import PASSWORD, host_of


@pytest.fixture
def staff_client(public_client):
    staff = User.objects.create_superuser(email="ops@platform.example", password=PASSWORD)
    public_client.force_login(staff)
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


def test_tenant_owner_has_no_access_to_the_platform_admin(cast):
    client = Client(HTTP_HOST="localhost")
    response = client.post("/admin/login/", {"username": cast.alice.email, "password": PASSWORD})
    assert response.status_code == 200  # the login form again: alice exists only in tenant A
    assert "_auth_user_id" not in client.session
