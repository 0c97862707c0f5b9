"""Requests are routed by host: the public site, a tenant, an unknown host, a suspended tenant."""

import pytest
from django.test import Client

from apps.tenants.models import Tenant
from apps.tenants.services import tenant_set_status
from tests.helpers import host_of


def test_public_host_serves_landing_and_signup(public_client):
    assert public_client.get("/").status_code == 200
    assert b"Create your organisation" in public_client.get("/signup/").content


def test_tenant_host_serves_its_login_page(client_a, cast):
    response = client_a.get("/login/")
    assert response.status_code == 200
    assert cast.tenant_a.name.encode() in response.content


def test_tenant_pages_need_login(client_a):
    response = client_a.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


@pytest.mark.parametrize("path", ["/", "/login/", "/admin/"])
def test_unknown_host_is_a_clear_404(db, path):
    response = Client(HTTP_HOST="nosuchtenant.localhost").get(path)
    assert response.status_code == 404
    assert b"There is no portal at this address" in response.content


def test_unknown_host_answers_json_on_api_paths(db):
    response = Client(HTTP_HOST="nosuchtenant.localhost").get("/api/v1/models/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_host_outside_the_portal_domain_is_not_found(db):
    response = Client(HTTP_HOST="evil.example.com").get("/")
    assert response.status_code == 404


@pytest.fixture
def suspended_a(cast):
    return tenant_set_status(actor=None, tenant=cast.tenant_a, status=Tenant.Status.SUSPENDED)


def test_suspended_tenant_gets_a_clear_403_page(suspended_a):
    response = Client(HTTP_HOST=host_of(suspended_a)).get("/login/")
    assert response.status_code == 403
    assert b"suspended" in response.content


def test_suspended_tenant_gets_json_403_on_api_paths(suspended_a):
    response = Client(HTTP_HOST=host_of(suspended_a)).get("/api/v1/models/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"


def test_suspending_one_tenant_leaves_the_other_untouched(suspended_a, cast):
    assert Client(HTTP_HOST=host_of(cast.tenant_b)).get("/login/").status_code == 200
