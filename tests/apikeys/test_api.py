"""/api/v1/keys: who may list, create, rotate and revoke which keys, and what the audit log keeps."""

from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django_tenants.utils import tenant_context

from apps.apikeys.models import ApiKey
from apps.apikeys.secrets import key_hash
from apps.apikeys.services import apikey_create, apikey_update
from tests.helpers import bearer


@pytest.fixture
def as_alice(client_a, cast, in_tenant_a):
    client_a.force_login(cast.alice)
    return client_a


@pytest.fixture
def as_dave(client_a, cast, in_tenant_a):
    client_a.force_login(cast.dave)
    return client_a


def _post(client, path, body=None, **extra):
    return client.post(path, body or {}, content_type="application/json", **extra)


def test_create_shows_the_secret_once_and_stores_only_its_hash(as_dave, cast):
    response = _post(as_dave, "/api/v1/keys", {"name": "ci", "scopes": ["inference"], "model_pins": {"fraud": "3"}})
    assert response.status_code == 201
    body = response.json()
    secret = body["secret"]
    key = ApiKey.objects.get(pk=body["id"])
    assert secret.startswith(key.prefix + "_")
    assert key.secret_hash == key_hash(secret)
    assert secret not in str(ApiKey.objects.filter(pk=key.pk).values().get())
    assert key.owner == cast.dave
    assert key.model_pins == {"fraud": "3"}
    assert "secret" not in as_dave.get(f"/api/v1/keys/{key.pk}").json()
    assert "secret" not in as_dave.get("/api/v1/keys").json()["results"][0]


def test_list_is_paginated_and_scoped_to_what_the_caller_may_manage(as_dave, make_key, cast):
    make_key(cast.alice, name="alice's")
    for index in range(3):
        make_key(cast.dave, name=f"dave {index}")
    page = as_dave.get("/api/v1/keys?page_size=2").json()
    assert page["count"] == 3
    assert len(page["results"]) == 2
    assert page["next"]
    assert {row["owner"] for row in page["results"]} == {cast.dave.email}


def test_owner_sees_and_manages_every_key(as_alice, make_key, cast):
    dave_key, _ = make_key(cast.dave)
    assert as_alice.get("/api/v1/keys").json()["count"] == 1
    assert _post(as_alice, f"/api/v1/keys/{dave_key.pk}/revoke").json()["status"] == "revoked"


def test_developer_cannot_touch_another_members_key_and_nothing_changes(as_dave, make_key, cast):
    alice_key, _ = make_key(cast.alice)
    for response in (
        as_dave.get(f"/api/v1/keys/{alice_key.pk}"),
        _post(as_dave, f"/api/v1/keys/{alice_key.pk}/revoke"),
        _post(as_dave, f"/api/v1/keys/{alice_key.pk}/rotate"),
        as_dave.patch(f"/api/v1/keys/{alice_key.pk}", {"scopes": ["keys:manage"]}, content_type="application/json"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    alice_key.refresh_from_db()
    assert (alice_key.revoked_at, alice_key.rotated_at, alice_key.scopes) == (None, None, ["inference", "models:read"])


def test_an_owner_cannot_give_a_key_to_a_role_that_cannot_hold_one(as_alice, cast):
    response = _post(as_alice, "/api/v1/keys", {"name": "x", "scopes": ["inference"], "owner": cast.victor.email})
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


def test_developer_cannot_create_a_key_for_someone_else(as_dave, cast):
    response = _post(as_dave, "/api/v1/keys", {"name": "x", "scopes": ["inference"], "owner": cast.alice.email})
    assert response.status_code == 403
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("member", ["olivia", "victor"])
def test_roles_without_key_rights_cannot_create_keys(client_a, cast, in_tenant_a, member):
    client_a.force_login(getattr(cast, member))
    response = _post(client_a, "/api/v1/keys", {"name": "x", "scopes": ["inference"]})
    assert response.status_code == 403
    assert client_a.get("/api/v1/keys").json()["count"] == 0
    assert not ApiKey.objects.exists()


def test_a_key_needs_keys_manage_to_manage_keys(client_a, make_key):
    _, secret = make_key(scopes=["inference"])
    response = client_a.get("/api/v1/keys", **bearer(secret))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_scope"


def test_a_managing_key_cannot_grant_more_than_it_has(client_a, make_key, in_tenant_a):
    _, secret = make_key(scopes=["keys:manage", "inference"])
    denied = _post(client_a, "/api/v1/keys", {"name": "x", "scopes": ["models:write"]}, **bearer(secret))
    assert denied.status_code == 403
    allowed = _post(client_a, "/api/v1/keys", {"name": "y", "scopes": ["inference"]}, **bearer(secret))
    assert allowed.status_code == 201
    assert ApiKey.objects.count() == 2


def test_rotate_returns_a_new_secret_and_keeps_the_old_for_the_grace_period(as_alice, make_key, client_a):
    key, old = make_key()
    body = _post(as_alice, f"/api/v1/keys/{key.pk}/rotate", {"grace_seconds": 3600}).json()
    assert body["secret"] != old
    assert body["prefix"] == key.prefix
    key.refresh_from_db()
    assert key.previous_secret_hash == key_hash(old)
    assert key.previous_secret_expires_at is not None


def test_update_changes_scopes_and_is_audited_with_its_actor(as_alice, make_key, cast):
    key, _ = make_key(cast.dave)
    response = as_alice.patch(
        f"/api/v1/keys/{key.pk}",
        {"scopes": ["inference", "reports:read"], "allowed_networks": ["10.0.0.0/8"]},
        content_type="application/json",
    )
    assert response.status_code == 200
    assert response.json()["scopes"] == ["inference", "reports:read"]
    entry = LogEntry.objects.get_for_object(key).latest("timestamp")
    assert entry.actor_id == cast.alice.pk
    assert "scopes" in entry.changes_dict


def test_create_rotate_and_revoke_are_audited_without_any_hash(as_alice, cast):
    body = _post(as_alice, "/api/v1/keys", {"name": "ci", "scopes": ["inference"]}).json()
    key = ApiKey.objects.get(pk=body["id"])
    _post(as_alice, f"/api/v1/keys/{key.pk}/rotate", {"grace_seconds": 60})
    _post(as_alice, f"/api/v1/keys/{key.pk}/revoke")
    entries = list(LogEntry.objects.get_for_object(key).order_by("timestamp"))
    assert [entry.action for entry in entries] == [
        LogEntry.Action.CREATE,
        LogEntry.Action.UPDATE,
        LogEntry.Action.UPDATE,
    ]
    assert {entry.actor_id for entry in entries} == {cast.alice.pk}
    key.refresh_from_db()
    for entry in entries:
        text = str(entry.changes) + str(entry.serialized_data or "")
        assert key.secret_hash not in text
        assert key.previous_secret_hash not in text
        assert "secret_hash" not in text


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes.0"),
        ({"scopes": ["inference"]}, "name"),
        ({"name": "   ", "scopes": ["inference"]}, "name"),
        ({"name": "x", "scopes": ["inference"], "allowed_networks": ["not-a-cidr"]}, None),
        ({"name": "x", "scopes": ["inference"], "model_pins": {"m": "latest"}}, None),
        ({"name": "x", "scopes": ["inference"], "expires_at": "2001-01-01T00:00:00Z"}, None),
    ],
)
def test_invalid_key_input_is_422_and_creates_nothing(as_alice, body, field):
    response = _post(as_alice, "/api/v1/keys", body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] in {"validation_error", "invalid_network", "invalid_pins", "invalid_expiry", "no_name"}
    if field:
        assert field in error["fields"]
    assert not ApiKey.objects.exists()


def test_a_key_of_tenant_b_is_not_found_on_a(as_alice, make_key, cast):
    b_key, _ = make_key(tenant=cast.tenant_b)
    with tenant_context(cast.tenant_b):
        ApiKey.objects.filter(pk=b_key.pk).update(id=90_001)  # an id that exists only in B
    assert as_alice.get("/api/v1/keys/90001").status_code == 404
    assert _post(as_alice, "/api/v1/keys/90001/revoke").status_code == 404
    with tenant_context(cast.tenant_b):
        assert ApiKey.objects.get(pk=90_001).revoked_at is None


def test_token_and_spend_limits_are_set_shown_changed_and_audited(as_alice, cast):
    body = {"name": "llm", "scopes": ["inference"], "tokens_per_minute": 20_000, "monthly_spend_limit": "25.50"}
    created = _post(as_alice, "/api/v1/keys", body)
    assert created.status_code == 201
    assert (created.json()["tokens_per_minute"], created.json()["monthly_spend_limit"]) == (20_000, "25.500000")
    key = ApiKey.objects.get(pk=created.json()["id"])
    assert (key.tokens_per_minute, key.monthly_spend_limit) == (20_000, Decimal("25.5"))
    changed = as_alice.patch(
        f"/api/v1/keys/{key.pk}", {"tokens_per_minute": 0, "monthly_spend_limit": None}, content_type="application/json"
    )
    assert changed.status_code == 200
    assert (changed.json()["tokens_per_minute"], changed.json()["monthly_spend_limit"]) == (0, None)
    shown = as_alice.get("/api/v1/keys").json()["results"][0]
    assert (shown["tokens_per_minute"], shown["monthly_spend_limit"]) == (0, None)
    entry = LogEntry.objects.get_for_object(key).latest("timestamp")
    assert entry.actor_id == cast.alice.pk
    assert entry.changes_dict["tokens_per_minute"] == ["20000", "0"]
    assert entry.changes_dict["monthly_spend_limit"][0] == "25.500000"


def test_a_new_key_has_no_limits_of_its_own(as_dave):
    body = _post(as_dave, "/api/v1/keys", {"name": "ci", "scopes": ["inference"]}).json()
    assert (body["tokens_per_minute"], body["monthly_spend_limit"]) == (None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens_per_minute", -1),
        ("tokens_per_minute", 1.5),
        ("tokens_per_minute", "many"),
        ("tokens_per_minute", 2**31),
        ("monthly_spend_limit", "-0.01"),
        ("monthly_spend_limit", "0.0000001"),
        ("monthly_spend_limit", "1000000"),
        ("monthly_spend_limit", "ten"),
    ],
)
def test_invalid_limits_are_422_and_change_nothing(as_alice, make_key, field, value):
    key, _ = make_key(tokens_per_minute=100, monthly_spend_limit=Decimal("5"))
    created = _post(as_alice, "/api/v1/keys", {"name": "x", "scopes": ["inference"], field: value})
    assert created.status_code == 422
    assert field in created.json()["error"]["fields"]
    changed = as_alice.patch(f"/api/v1/keys/{key.pk}", {field: value}, content_type="application/json")
    assert changed.status_code == 422
    assert field in changed.json()["error"]["fields"]
    assert ApiKey.objects.count() == 1
    key.refresh_from_db()
    assert (key.tokens_per_minute, key.monthly_spend_limit) == (100, Decimal("5"))


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"tokens_per_minute": -5}, "invalid_tokens_per_minute"),
        ({"tokens_per_minute": True}, "invalid_tokens_per_minute"),
        ({"monthly_spend_limit": Decimal("-1")}, "invalid_spend_limit"),
        ({"monthly_spend_limit": Decimal("0.0000001")}, "invalid_spend_limit"),
        ({"monthly_spend_limit": Decimal("NaN")}, "invalid_spend_limit"),
        ({"monthly_spend_limit": "lots"}, "invalid_spend_limit"),
    ],
)
def test_the_services_refuse_invalid_limits_too(cast, in_tenant_a, make_key, changes, code):
    with pytest.raises(ValidationError) as refused:
        apikey_create(actor=cast.alice, name="x", scopes=["inference"], **changes)
    assert refused.value.code == code
    key, _ = make_key()
    with pytest.raises(ValidationError) as refused:
        apikey_update(actor=cast.alice, key=key, **changes)
    assert refused.value.code == code
    key.refresh_from_db()
    assert (key.tokens_per_minute, key.monthly_spend_limit) == (None, None)


def test_limits_of_a_key_of_tenant_b_cannot_be_changed_from_a(as_alice, make_key, cast, client_b):
    b_key, _ = make_key(tenant=cast.tenant_b, tokens_per_minute=10)
    with tenant_context(cast.tenant_b):
        ApiKey.objects.filter(pk=b_key.pk).update(id=90_002)  # an id that exists only in B
    response = as_alice.patch("/api/v1/keys/90002", {"tokens_per_minute": 0}, content_type="application/json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    a_key, _ = make_key(cast.alice, tokens_per_minute=10)
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)  # the session lives in B's schema
    response = client_b.patch(f"/api/v1/keys/{a_key.pk}", {"tokens_per_minute": 0}, content_type="application/json")
    assert response.status_code == 404
    with tenant_context(cast.tenant_a):
        a_key.refresh_from_db()
    assert a_key.tokens_per_minute == 10
    with tenant_context(cast.tenant_b):
        assert ApiKey.objects.get(pk=90_002).tokens_per_minute == 10
