"""The API keys page: list, create, rotate and revoke in the browser portal, and who may do what."""

import html
import re
from datetime import timedelta

import pytest
from auditlog.models import LogEntry
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.apikeys.models import ApiKey, Scope
from apps.apikeys.secrets import key_hash, key_matches
from apps.apikeys.services import apikey_create
from tests.helpers import login

SECRET_RE = re.compile(rb'<input id="new-secret"[^>]*value="([^"]+)"')


def _secret_of(response) -> str:
    match = SECRET_RE.search(response.content)
    assert match, response.content[:2000]
    return html.unescape(match.group(1).decode())


def _key_for(user, name: str = "ci key", **kwargs) -> tuple[ApiKey, str]:
    return apikey_create(actor=user, name=name, scopes=[Scope.INFERENCE], **kwargs)


def _snapshot(key: ApiKey) -> tuple:
    key.refresh_from_db()
    return key.secret_hash, key.previous_secret_hash, key.rotated_at, key.revoked_at


def test_developer_creates_a_key_and_sees_its_secret_exactly_once(client_a, cast, in_tenant_a):
    login(client_a, cast.dave)
    response = client_a.post(
        "/keys/",
        {
            "name": "fraud scorer",
            "scopes": [Scope.INFERENCE, Scope.MODELS_READ],
            "expires_in_days": "30",
            "model_pins": "fraud-detector=3\nchurn = 12\n",
            "allowed_networks": "10.0.0.0/8\n192.168.1.7\n",
            "requests_per_minute": "120",
            "tokens_per_minute": "50000",
            "monthly_spend_limit": "25.5",
        },
    )

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert b"will not be shown again" in response.content
    assert b'data-copy-target="#new-secret"' in response.content
    secret = _secret_of(response)
    key = ApiKey.objects.get(name="fraud scorer")
    assert key.owner == cast.dave
    assert key.created_by == cast.dave
    assert secret.startswith(key.prefix + "_")
    assert key.secret_hash == key_hash(secret)
    assert secret not in {str(value) for value in ApiKey.objects.filter(pk=key.pk).values().get().values()}
    assert key.scopes == [Scope.INFERENCE, Scope.MODELS_READ]
    assert key.model_pins == {"fraud-detector": "3", "churn": "12"}
    assert key.allowed_networks == ["10.0.0.0/8", "192.168.1.7/32"]
    assert key.requests_per_minute == 120
    assert key.tokens_per_minute == 50000
    assert str(key.monthly_spend_limit) == "25.500000"
    assert timedelta(days=29) < key.expires_at - timezone.now() <= timedelta(days=30)

    listing = client_a.get("/keys/")
    assert listing.status_code == 200
    assert key.prefix.encode() in listing.content
    assert "fraud-detector → 3" in listing.content.decode()
    assert secret.encode() not in listing.content
    assert secret not in str(dict(client_a.session.items()))
    assert all(secret not in morsel.value for morsel in client_a.cookies.values())


def test_developer_always_creates_for_himself(client_a, cast, in_tenant_a):
    login(client_a, cast.dave)
    page = client_a.get("/keys/")
    assert b'name="owner"' not in page.content

    response = client_a.post("/keys/", {"name": "mine", "scopes": [Scope.INFERENCE], "owner": cast.alice.pk})

    assert response.status_code == 200
    assert ApiKey.objects.get(name="mine").owner == cast.dave


def test_owner_creates_a_key_for_a_developer(client_a, cast, in_tenant_a):
    login(client_a, cast.alice)
    page = client_a.get("/keys/")
    assert cast.dave.email.encode() in page.content  # offered in the owner select
    assert f'value="{cast.victor.pk}"'.encode() not in page.content  # a viewer cannot hold keys

    response = client_a.post(
        "/keys/", {"name": "for dave", "scopes": [Scope.MODELS_READ], "owner": cast.dave.pk, "expires_on": ""}
    )

    assert response.status_code == 200
    key = ApiKey.objects.get(name="for dave")
    assert (key.owner, key.created_by) == (cast.dave, cast.alice)
    assert key_matches(_secret_of(response), key.secret_hash)
    assert client_a.post("/keys/", {"name": "for me", "scopes": [Scope.INFERENCE]}).status_code == 200
    assert ApiKey.objects.get(name="for me").owner == cast.alice  # no owner chosen: the actor


def test_owner_sees_every_key_and_developer_only_his_own(client_a, cast, in_tenant_a):
    alices, _ = _key_for(cast.alice, "alice key")
    daves, _ = _key_for(cast.dave, "dave key")

    owner_page = login(client_a, cast.alice).get("/keys/")
    assert alices.prefix.encode() in owner_page.content
    assert daves.prefix.encode() in owner_page.content
    assert cast.dave.email.encode() in owner_page.content

    client_a.logout()
    developer_page = login(client_a, cast.dave).get("/keys/")
    assert daves.prefix.encode() in developer_page.content
    assert alices.prefix.encode() not in developer_page.content


def test_key_statuses_are_shown(client_a, cast, in_tenant_a):
    revoked, _ = _key_for(cast.dave, "gone")
    ApiKey.objects.filter(pk=revoked.pk).update(revoked_at=timezone.now())
    expired, _ = _key_for(cast.dave, "old")
    ApiKey.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(days=1))
    grace_until = timezone.now() + timedelta(hours=1)
    rotating, _ = _key_for(cast.dave, "rotating")
    ApiKey.objects.filter(pk=rotating.pk).update(previous_secret_hash="x" * 64, previous_secret_expires_at=grace_until)
    _key_for(cast.dave, "fine")

    content = login(client_a, cast.dave).get("/keys/").content.decode()

    rows = dict(re.findall(r'<tr data-prefix="(\w+)">(.*?)</tr>', content, re.S))
    assert "revoked" in rows[revoked.prefix]
    assert "Rotate" not in rows[revoked.prefix]  # no actions on a revoked key
    assert "expired" in rows[expired.prefix]
    assert re.search(rf"rotation grace until <[^>]+>{grace_until:%Y-%m-%d %H:%M}<", rows[rotating.prefix])
    assert content.count('class="status status-active"') == 1


@pytest.mark.parametrize(
    ("fields", "field_in_error"),
    [
        ({"scopes": []}, "scopes"),
        ({"allowed_networks": "10.0.0.0/8\nnot-a-network"}, "allowed_networks"),
        ({"model_pins": "fraud-detector=latest"}, "model_pins"),
        ({"model_pins": "fraud-detector"}, "model_pins"),
        ({"expires_on": "2001-01-01"}, "expires_on"),
        ({"expires_in_days": "0"}, "expires_in_days"),
        ({"expires_in_days": "3", "expires_on": "2099-01-01"}, None),
        ({"name": ""}, "name"),
        ({"requests_per_minute": "-5"}, "requests_per_minute"),
    ],
)
def test_invalid_key_form_answers_400_and_creates_nothing(client_a, cast, in_tenant_a, fields, field_in_error):
    login(client_a, cast.dave)
    before = ApiKey.objects.count()

    response = client_a.post("/keys/", {"name": "bad", "scopes": [Scope.INFERENCE], **fields})

    assert response.status_code == 400
    assert ApiKey.objects.count() == before
    assert b'id="new-secret"' not in response.content
    form = response.context["form"]
    assert field_in_error in form.errors if field_in_error else form.non_field_errors()


@pytest.mark.parametrize("member", ["victor", "dave"])
def test_owner_cannot_create_a_key_for_a_viewer_or_a_deactivated_member(client_a, cast, in_tenant_a, member):
    User.objects.filter(pk=cast.dave.pk).update(is_active=False)
    login(client_a, cast.alice)
    before = ApiKey.objects.count()

    response = client_a.post(
        "/keys/", {"name": "for someone", "scopes": [Scope.INFERENCE], "owner": getattr(cast, member).pk}
    )

    assert response.status_code == 400
    assert "owner" in response.context["form"].errors
    assert ApiKey.objects.count() == before


@pytest.mark.parametrize("member", ["olivia", "victor"])
def test_roles_without_keys_get_403_and_change_nothing(client_a, cast, in_tenant_a, member):
    key, _ = _key_for(cast.alice)
    before = (ApiKey.objects.count(), _snapshot(key))
    login(client_a, getattr(cast, member))

    assert client_a.get("/keys/").status_code == 403
    assert client_a.post("/keys/", {"name": "x", "scopes": [Scope.INFERENCE]}).status_code == 403
    assert client_a.post(f"/keys/{key.pk}/rotate/", {"grace_seconds": "0"}).status_code == 403
    assert client_a.get(f"/keys/{key.pk}/revoke/").status_code == 403
    assert client_a.post(f"/keys/{key.pk}/revoke/").status_code == 403
    assert (ApiKey.objects.count(), _snapshot(key)) == before
    assert b'href="/keys/"' not in client_a.get("/").content  # no nav link either


def test_anonymous_visitors_are_sent_to_login(client_a, cast):
    response = client_a.get("/keys/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_developer_cannot_rotate_or_revoke_the_owners_key(client_a, cast, in_tenant_a):
    key, _ = _key_for(cast.alice)
    before = _snapshot(key)
    login(client_a, cast.dave)

    assert client_a.post(f"/keys/{key.pk}/rotate/", {"grace_seconds": "3600"}).status_code == 404
    assert client_a.get(f"/keys/{key.pk}/revoke/").status_code == 404
    assert client_a.post(f"/keys/{key.pk}/revoke/").status_code == 404
    assert _snapshot(key) == before


def test_a_key_of_another_tenant_is_not_found(client_a, cast, in_tenant_a):
    with tenant_context(cast.tenant_b):
        foreign, _ = _key_for(cast.charlie, "bravo key")
    login(client_a, cast.alice)

    assert foreign.prefix.encode() not in client_a.get("/keys/").content
    assert client_a.post(f"/keys/{foreign.pk}/rotate/", {"grace_seconds": "0"}).status_code == 404
    assert client_a.get(f"/keys/{foreign.pk}/revoke/").status_code == 404
    assert client_a.post(f"/keys/{foreign.pk}/revoke/").status_code == 404

    with tenant_context(cast.tenant_b):
        assert _snapshot(foreign)[1:] == ("", None, None)


def test_rotation_shows_a_new_secret_and_the_old_one_works_during_grace(client_a, cast, in_tenant_a):
    key, old_secret = _key_for(cast.dave)
    login(client_a, cast.dave)
    assert client_a.get(f"/keys/{key.pk}/rotate/").status_code == 405

    response = client_a.post(f"/keys/{key.pk}/rotate/", {"grace_seconds": "3600"})

    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    assert b"will not be shown again" in response.content
    new_secret = _secret_of(response)
    assert new_secret != old_secret
    assert new_secret.startswith(key.prefix + "_")
    key.refresh_from_db()
    assert key_matches(new_secret, key.secret_hash)
    assert key_matches(old_secret, key.previous_secret_hash)
    assert timedelta(minutes=59) < key.previous_secret_expires_at - timezone.now() <= timedelta(hours=1)
    assert b"rotation grace until" in client_a.get("/keys/").content


def test_rotation_without_grace_drops_the_old_secret(client_a, cast, in_tenant_a):
    key, old_secret = _key_for(cast.dave)
    login(client_a, cast.dave)

    response = client_a.post(f"/keys/{key.pk}/rotate/", {"grace_seconds": "0"})

    assert response.status_code == 200
    key.refresh_from_db()
    assert key_matches(_secret_of(response), key.secret_hash)
    assert not key_matches(old_secret, key.secret_hash)
    assert key.previous_secret_hash == ""


def test_rotation_refuses_an_unknown_grace_period_and_a_revoked_key(client_a, cast, in_tenant_a):
    key, _ = _key_for(cast.dave)
    before = _snapshot(key)
    login(client_a, cast.dave)

    assert client_a.post(f"/keys/{key.pk}/rotate/", {"grace_seconds": "999999"}).status_code == 400
    assert _snapshot(key) == before

    ApiKey.objects.filter(pk=key.pk).update(revoked_at=timezone.now())
    before = _snapshot(key)
    response = client_a.post(f"/keys/{key.pk}/rotate/", {"grace_seconds": "0"})
    assert response.status_code == 400
    assert b"revoked key cannot be rotated" in response.content
    assert _snapshot(key) == before


def test_revoking_needs_a_confirmed_post_and_is_audited(client_a, cast, in_tenant_a):
    key, _ = _key_for(cast.dave)
    login(client_a, cast.dave)

    confirm = client_a.get(f"/keys/{key.pk}/revoke/")
    assert confirm.status_code == 200
    assert b"Revoke key" in confirm.content
    key.refresh_from_db()
    assert key.revoked_at is None

    response = client_a.post(f"/keys/{key.pk}/revoke/")
    assert response.status_code == 302
    assert response["Location"] == "/keys/"
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert key.revoked_by == cast.dave
    entry = LogEntry.objects.get_for_object(key).filter(action=LogEntry.Action.UPDATE).latest("timestamp")
    assert entry.actor == cast.dave
    assert "revoked_at" in entry.changes_dict

    listing = client_a.get("/keys/")
    assert f"Key {key.name} ({key.prefix}) is revoked.".encode() in listing.content
    assert b"status-revoked" in listing.content


def test_owner_revokes_a_developers_key(client_a, cast, in_tenant_a):
    key, _ = _key_for(cast.dave)
    login(client_a, cast.alice)

    assert client_a.post(f"/keys/{key.pk}/revoke/").status_code == 302

    key.refresh_from_db()
    assert key.revoked_by == cast.alice
    assert LogEntry.objects.get_for_object(key).filter(actor=cast.alice).exists()


def test_nav_links_to_the_keys_page_for_key_holders(client_a, cast):
    assert b'href="/keys/"' in login(client_a, cast.dave).get("/").content


@pytest.mark.parametrize("count", [3, 10])
def test_key_list_queries_are_bounded(client_a, cast, in_tenant_a, django_assert_max_num_queries, count):
    for number in range(count):
        owner = cast.dave if number % 2 else cast.alice
        _key_for(owner, f"key {number}", model_pins={"m": "1"}, allowed_networks=["10.0.0.0/8"])
    login(client_a, cast.alice)

    with django_assert_max_num_queries(12):
        response = client_a.get("/keys/")

    assert response.status_code == 200
    assert response.content.count(b"<tr data-prefix=") == count
