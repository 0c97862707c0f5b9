"""Key authentication: both headers, every refusal with its status and code, and the hot-path query budget."""

from datetime import timedelta

import pytest
from django.db import connection
from django.test import Client
from django.utils import timezone
from django_tenants.utils import tenant_context
from rest_framework.test import APIRequestFactory

from apps.accounts.services import member_change_role, member_set_active
from apps.apikeys.authentication import ApiKeyAuthentication
from apps.apikeys.models import ApiKey
from apps.apikeys.services import apikey_revoke, apikey_rotate
from apps.compliance.models import AccessEvent
from apps.compliance.services import access_events_flush
from tests.helpers import bearer, host_of


def _me(client, **headers):
    return client.get("/api/v1/me", **headers)


def test_bearer_header_authenticates(client_a, make_key, cast):
    key, secret = make_key(cast.dave)
    response = _me(client_a, **bearer(secret))
    assert response.status_code == 200
    body = response.json()
    assert body["user"]["email"] == cast.dave.email
    assert body["user"]["role"] == "developer"
    assert body["key"]["prefix"] == key.prefix
    assert body["key"]["scopes"] == ["inference", "models:read"]
    assert body["tenant"]["slug"] == "alpha"
    assert body["authenticated_by"] == "api_key"


def test_x_api_key_header_authenticates(client_a, make_key):
    _, secret = make_key()
    assert _me(client_a, HTTP_X_API_KEY=secret).status_code == 200


def _refusal(response, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert error["request_id"] == response["X-Request-ID"]


@pytest.mark.parametrize(
    "header",
    [
        {"HTTP_AUTHORIZATION": "Bearer not-a-key"},
        {"HTTP_AUTHORIZATION": "Bearer "},
        {"HTTP_X_API_KEY": "aip_000000000000_" + "x" * 43},
    ],
)
def test_malformed_or_unknown_keys_are_401(client_a, header):
    _refusal(_me(client_a, **header), 401, "invalid_api_key")


def test_wrong_secret_for_a_real_prefix_is_refused_like_an_unknown_key(client_a, make_key):
    _key, secret = make_key()
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    _refusal(_me(client_a, **bearer(forged)), 401, "invalid_api_key")


def test_key_of_another_tenant_is_refused_exactly_like_an_unknown_key(client_a, make_key, cast):
    _, b_secret = make_key(tenant=cast.tenant_b)
    foreign = _me(client_a, **bearer(b_secret))
    unknown = _me(client_a, **bearer("aip_0123456789ab_" + "A" * 43))
    assert foreign.status_code == unknown.status_code == 401
    assert foreign.json()["error"] | {"request_id": ""} == unknown.json()["error"] | {"request_id": ""}
    assert _me(Client(HTTP_HOST=host_of(cast.tenant_b)), **bearer(b_secret)).status_code == 200


def test_revoked_key_is_refused(client_a, make_key, cast, in_tenant_a):
    key, secret = make_key()
    assert _me(client_a, **bearer(secret)).status_code == 200  # now cached
    apikey_revoke(actor=cast.alice, key=key)
    _refusal(_me(client_a, **bearer(secret)), 401, "key_revoked")


def test_expired_key_is_refused(client_a, make_key, in_tenant_a):
    key, secret = make_key(expires_at=timezone.now() + timedelta(seconds=30))
    ApiKey.objects.filter(pk=key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    from apps.apikeys.selectors import apikey_cache_forget

    apikey_cache_forget(key.prefix)
    _refusal(_me(client_a, **bearer(secret)), 401, "key_expired")


def test_key_expires_while_cached(client_a, make_key, in_tenant_a, monkeypatch):
    _key, secret = make_key(expires_at=timezone.now() + timedelta(minutes=5))
    assert _me(client_a, **bearer(secret)).status_code == 200
    later = timezone.now() + timedelta(minutes=6)
    monkeypatch.setattr("apps.apikeys.authentication.timezone.now", lambda: later)
    _refusal(_me(client_a, **bearer(secret)), 401, "key_expired")


def test_network_allow_list(client_a, make_key):
    _, inside = make_key(allowed_networks=["127.0.0.0/8"])
    _, outside = make_key(allowed_networks=["10.1.0.0/16", "2001:db8::/32"])
    assert _me(client_a, **bearer(inside)).status_code == 200
    _refusal(_me(client_a, **bearer(outside)), 403, "network_not_allowed")


def test_rotation_grace_then_refusal(client_a, make_key, cast, in_tenant_a, monkeypatch):
    key, old = make_key()
    key, new = apikey_rotate(actor=cast.alice, key=key, grace_seconds=60)
    assert _me(client_a, **bearer(new)).status_code == 200
    assert _me(client_a, **bearer(old)).status_code == 200
    later = timezone.now() + timedelta(seconds=61)
    monkeypatch.setattr("apps.apikeys.authentication.timezone.now", lambda: later)
    _refusal(_me(client_a, **bearer(old)), 401, "invalid_api_key")
    assert _me(client_a, **bearer(new)).status_code == 200


def test_rotation_without_grace_refuses_the_old_secret_at_once(client_a, make_key, cast, in_tenant_a):
    key, old = make_key()
    assert _me(client_a, **bearer(old)).status_code == 200
    apikey_rotate(actor=cast.alice, key=key, grace_seconds=0)
    _refusal(_me(client_a, **bearer(old)), 401, "invalid_api_key")


def test_deactivating_the_owner_stops_the_key_at_once(client_a, make_key, cast, in_tenant_a):
    _, secret = make_key(cast.dave)
    assert _me(client_a, **bearer(secret)).status_code == 200
    member_set_active(actor=cast.alice, member=cast.dave, active=False)
    _refusal(_me(client_a, **bearer(secret)), 401, "key_revoked")


def test_a_demoted_owner_loses_the_key_at_once_and_regains_it_when_promoted(client_a, make_key, cast, in_tenant_a):
    _, secret = make_key(cast.dave)
    assert _me(client_a, **bearer(secret)).json()["user"]["role"] == "developer"
    member_change_role(actor=cast.alice, member=cast.dave, role="viewer")
    _refusal(_me(client_a, **bearer(secret)), 401, "key_revoked")
    member_change_role(actor=cast.alice, member=cast.dave, role="owner")
    assert _me(client_a, **bearer(secret)).json()["user"]["role"] == "owner"


def test_no_credentials_is_401_with_a_challenge(client_a):
    response = _me(client_a)
    _refusal(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_portal_session_works_for_the_portals_own_calls(client_a, cast, in_tenant_a):
    client_a.force_login(cast.dave)
    body = _me(client_a).json()
    assert body["authenticated_by"] == "session"
    assert body["key"] is None


def test_session_writes_need_csrf(cast, in_tenant_a):
    client = Client(HTTP_HOST=host_of(cast.tenant_a), enforce_csrf_checks=True)
    client.force_login(cast.alice)
    response = client.post("/api/v1/keys", {"name": "x", "scopes": ["inference"]}, content_type="application/json")
    _refusal(response, 403, "forbidden")
    assert "CSRF" in response.json()["error"]["message"]


def test_every_refusal_is_access_audited_in_the_tenant(client_a, make_key, cast, in_tenant_a):
    key, secret = make_key()
    _me(client_a, **bearer("aip_0123456789ab_" + "A" * 43))
    _me(client_a, HTTP_AUTHORIZATION="Bearer garbage")
    apikey_revoke(actor=cast.alice, key=key)
    _me(client_a, **bearer(secret))
    _me(client_a)
    connection.set_tenant(cast.tenant_a)
    access_events_flush(schema_name="alpha")
    reasons = sorted(AccessEvent.objects.values_list("reason", flat=True))
    assert reasons == ["malformed_key", "missing_credentials", "revoked_key", "unknown_key"]
    revoked = AccessEvent.objects.get(reason="revoked_key")
    assert (revoked.key_prefix, revoked.path, revoked.method, revoked.client_ip) == (
        key.prefix,
        "/api/v1/me",
        "GET",
        "127.0.0.1",
    )
    with tenant_context(cast.tenant_b):
        access_events_flush(schema_name="bravo")
        assert not AccessEvent.objects.exists()


def test_authentication_with_a_cached_key_does_no_database_query(make_key, cast, django_assert_max_num_queries):
    """The hot-path budget: with the key in Redis, authenticating costs no query at all."""
    _, secret = make_key()
    request = APIRequestFactory().get("/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {secret}")
    request.tenant = cast.tenant_a
    with tenant_context(cast.tenant_a):
        ApiKeyAuthentication().authenticate(request)  # fills the cache
        with django_assert_max_num_queries(0):
            user, _principal = ApiKeyAuthentication().authenticate(request)
    assert user.pk == cast.alice.pk


def test_a_whole_authenticated_request_does_at_most_one_query(client_a, make_key, django_assert_max_num_queries):
    """Tenant routing, key, rate limit and the view itself: at most one statement (a `SET search_path`)."""
    _, secret = make_key()
    assert _me(client_a, **bearer(secret)).status_code == 200
    with django_assert_max_num_queries(1):
        assert _me(client_a, **bearer(secret)).status_code == 200
