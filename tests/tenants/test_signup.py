"""Sign-up on the public site: a tenant, its schema, its domain and its owner, or nothing at all."""

import pytest
from auditlog.models import LogEntry
from django.db import connection
from django_tenants.utils import schema_exists, tenant_context

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.accounts.selectors import user_role
from apps.tenants.models import Domain, Tenant
from apps.tenants.services import tenant_signup
from tests.helpers import PASSWORD

VALID = {
    "name": "Gamma GmbH",
    "slug": "gamma",
    "plan": "team",
    "email": "Boss@Gamma.example",
    "password": PASSWORD,
}


def test_signup_creates_tenant_schema_domain_and_owner(public_client):
    response = public_client.post("/signup/", VALID)
    assert response.status_code == 200
    assert b"http://gamma.localhost:8000/login/" in response.content
    tenant = Tenant.objects.get(schema_name="gamma")
    assert (tenant.name, tenant.plan, tenant.status) == ("Gamma GmbH", "team", "active")
    assert Domain.objects.get(tenant=tenant).domain == "gamma.localhost"
    assert schema_exists("gamma")
    assert LogEntry.objects.get_for_object(tenant).filter(action=LogEntry.Action.CREATE).exists()
    with tenant_context(tenant):
        owner = User.objects.get()
        assert owner.email == "boss@gamma.example"
        assert user_role(owner) == Role.OWNER
        assert owner.is_staff
        assert not owner.is_superuser
        assert owner.check_password(PASSWORD)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("slug", "Gamma-1", b"lowercase letters and digits"),
        ("slug", "ab", b"lowercase letters and digits"),
        ("slug", "admin", b"This name is reserved"),
        ("slug", "pgcrypto", b"This name is reserved"),
        ("slug", "alpha", b"This name is taken"),
        ("password", "short", b"too short"),
        ("email", "nope", b"valid email"),
    ],
)
def test_invalid_signup_is_refused_and_creates_nothing(public_client, cast, field, value, message):
    tenants_before = Tenant.objects.count()
    response = public_client.post("/signup/", {**VALID, field: value})
    assert response.status_code == 400
    assert message in response.content
    assert Tenant.objects.count() == tenants_before
    assert not schema_exists("gamma")


def test_failed_owner_creation_leaves_no_half_made_tenant(django_db_setup, django_db_blocker, monkeypatch):
    """Schema creation commits as it goes (as in production), so this runs outside a test transaction."""
    import apps.accounts.services as account_services

    def broken(**kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(account_services, "user_create", broken)
    with django_db_blocker.unblock():
        with pytest.raises(RuntimeError):
            tenant_signup(name="Delta", slug="delta", owner_email="x@delta.example", owner_password=PASSWORD)
        connection.set_schema_to_public()
        assert not Tenant.objects.filter(schema_name="delta").exists()
        assert not Domain.objects.filter(domain__startswith="delta.").exists()
        assert not schema_exists("delta")
