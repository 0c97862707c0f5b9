"""Tenant isolation: a user, session or admin of tenant A can neither reach nor detect tenant B's data."""

from django.core.cache import cache
from django.test import Client
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.accounts.roles import Role
from apps.accounts.selectors import user_role
from tests.helpers import PASSWORD, host_of, login, otp_login


def test_b_user_cannot_log_in_on_a_host(client_a, cast):
    response = client_a.post("/login/", {"username": cast.charlie.email, "password": PASSWORD})
    assert response.status_code == 200  # the form again, with the same error as a wrong password
    assert b"Please enter a correct email and password" in response.content
    assert "_auth_user_id" not in client_a.session


def test_a_session_cookie_is_worthless_on_b_host(client_a, cast):
    login(client_a, cast.alice)
    assert client_a.get("/").status_code == 200
    stolen = client_a.cookies["sessionid"].value
    on_b = Client(HTTP_HOST=host_of(cast.tenant_b))
    on_b.cookies["sessionid"] = stolen
    assert on_b.get("/").status_code == 302
    assert on_b.get("/admin/").status_code == 302


def test_a_admin_shows_nothing_of_b(client_a, cast):
    otp_login(client_a, cast.olivia)
    users = client_a.get("/admin/accounts/user/").content
    audit = client_a.get("/admin/auditlog/logentry/").content
    for page in (users, audit):
        assert cast.alice.email.encode() in page
        assert b"bravo" not in page
        assert cast.charlie.email.encode() not in page


def test_a_admin_does_not_list_tenants(client_a, cast):
    alice = otp_login(client_a, cast.alice)
    assert b"Tenants" not in alice.get("/admin/").content
    assert alice.get("/admin/tenants/tenant/").status_code in (403, 404)


def test_owner_cannot_touch_a_member_of_another_tenant_by_id(client_a, cast):
    login(client_a, cast.alice)
    with tenant_context(cast.tenant_a):
        id_only_in_b = max(User.objects.values_list("pk", flat=True)) + 1000
    with tenant_context(cast.tenant_b):
        User.objects.create_user(id=id_only_in_b, email="only-in-b@bravo.example", password=None)
    assert client_a.post(f"/members/{id_only_in_b}/role/", {"role": "viewer"}).status_code == 404
    assert client_a.post(f"/members/{id_only_in_b}/active/", {"active": "0"}).status_code == 404
    with tenant_context(cast.tenant_b):
        victim = User.objects.get(pk=id_only_in_b)
        assert user_role(victim) is None
        assert victim.is_active


def test_members_pages_show_only_their_own_tenant(client_a, client_b, cast):
    page_a = login(client_a, cast.alice).get("/members/").content
    page_b = login(client_b, cast.charlie).get("/members/").content
    assert cast.charlie.email.encode() not in page_a
    assert cast.alice.email.encode() not in page_b


def test_cache_entries_are_per_tenant(cast):
    with tenant_context(cast.tenant_a):
        cache.set("greeting", "from A", 30)
    with tenant_context(cast.tenant_b):
        assert cache.get("greeting") is None
    with tenant_context(cast.tenant_a):
        assert cache.get("greeting") == "from A"
        cache.delete("greeting")


def test_roles_are_per_tenant(cast):
    with tenant_context(cast.tenant_b):
        assert not User.objects.filter(email=cast.alice.email).exists()
    with tenant_context(cast.tenant_a):
        assert user_role(User.objects.get(pk=cast.alice.pk)) == Role.OWNER
