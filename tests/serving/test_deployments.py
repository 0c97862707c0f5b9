"""/api/v1/deployments: what may be deployed where, by whom; refused deployments leave nothing behind."""

from decimal import Decimal

import pytest
from auditlog.models import LogEntry
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django_tenants.utils import tenant_context

from apps.registry.models import ModelVersion
from apps.serving.models import Deployment
from apps.serving.services import deployment_create
from tests.helpers import bearer
from tests.serving.conftest import make_model


def _post(client, path, body=None, **extra):
    return client.post(path, body or {}, content_type="application/json", **extra)


def _patch(client, path, body, **extra):
    return client.patch(path, body, content_type="application/json", **extra)


@pytest.fixture
def as_dave(client_a, cast, in_tenant_a):
    client_a.force_login(cast.dave)
    return client_a


@pytest.fixture
def fraud(in_tenant_a):
    model = make_model("fraud", versions=(1, 2, 3), aliases={"champion": 2, "challenger": 3})
    ModelVersion.objects.filter(model=model, version=1).update(status=ModelVersion.Status.ARCHIVED)
    return model


@pytest.fixture
def server(make_server, in_tenant_a):
    return make_server("gpu-a")


def test_developer_deploys_an_alias_with_a_canary_and_prices(as_dave, fraud, server, cast):
    response = _post(
        as_dave,
        "/api/v1/deployments",
        {
            "model": "fraud",
            "alias": "champion",
            "server": server.pk,
            "canary_version": 3,
            "canary_percent": 10,
            "price_per_request": "0.0015",
            "price_per_1k_tokens": "0.02",
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"] == "fraud"
    assert (body["alias"], body["version"]) == ("champion", None)
    assert body["server"] == {"id": server.pk, "name": "gpu-a"}
    assert (body["canary_version"], body["canary_percent"]) == (3, 10)
    assert body["price_per_request"] == "0.001500"
    assert body["is_active"] is True
    deployment = Deployment.objects.get()
    assert deployment.created_by == cast.dave
    assert deployment.price_per_gpu_second == Decimal(0)
    assert as_dave.get("/api/v1/deployments").json()["count"] == 1
    assert as_dave.get(f"/api/v1/deployments/{deployment.pk}").json()["id"] == deployment.pk


def test_a_version_can_be_deployed_next_to_the_alias(as_dave, fraud, server):
    first = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "alias": "champion", "server": server.pk})
    assert first.status_code == 201
    response = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "version": 2, "server": server.pk})
    assert response.status_code == 201
    assert (response.json()["alias"], response.json()["version"]) == (None, 2)
    assert as_dave.get("/api/v1/deployments?model=fraud&active=true").json()["count"] == 2
    assert as_dave.get("/api/v1/deployments?model=other").json()["count"] == 0


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"alias": "champion", "version": 2}, "alias_or_version"),
        ({}, "alias_or_version"),
        ({"alias": "Champion"}, "invalid_alias"),
        ({"alias": "v2"}, "invalid_alias"),
        ({"version": 1}, "version_archived"),
        ({"version": 9}, "validation_error"),
        ({"version": 7}, "validation_error"),
        ({"alias": "champion", "canary_version": 3}, "invalid_canary"),
        ({"alias": "champion", "canary_percent": 10}, "invalid_canary"),
        ({"alias": "champion", "canary_version": 3, "canary_percent": 100}, "invalid_canary"),
        ({"version": 2, "canary_version": 2, "canary_percent": 5}, "invalid_canary"),
        ({"alias": "champion", "canary_version": 1, "canary_percent": 5}, "version_archived"),
        ({"alias": "champion", "price_per_request": "-0.01"}, "validation_error"),
        ({"alias": "champion", "price_per_request": "0.0000001"}, "validation_error"),
        ({"alias": "champion", "server": 999_999}, "validation_error"),
        ({"model": "nope", "alias": "champion"}, "validation_error"),
    ],
)
def test_invalid_deployments_are_422_and_create_nothing(as_dave, fraud, server, changes, code):
    make_model("other", versions=(7,), aliases={})
    body = {"model": "fraud", "server": server.pk, **changes}
    response = _post(as_dave, "/api/v1/deployments", body)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == code
    assert not Deployment.objects.exists()
    assert not LogEntry.objects.filter(content_type__model="deployment").exists()


def test_one_active_deployment_per_alias_and_per_version(as_dave, fraud, server):
    for body in ({"alias": "champion"}, {"version": 2}):
        first = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "server": server.pk, **body})
        assert first.status_code == 201
        again = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "server": server.pk, **body})
        assert again.status_code == 422
        assert again.json()["error"]["code"] == "deployment_exists"
        _post(as_dave, f"/api/v1/deployments/{first.json()['id']}/deactivate")
        assert _post(as_dave, "/api/v1/deployments", {"model": "fraud", "server": server.pk, **body}).status_code == 201
    assert Deployment.objects.filter(is_active=True).count() == 2
    assert Deployment.objects.count() == 4


def test_a_version_of_another_model_is_refused_by_the_service(fraud, server, cast):
    other = make_model("other", versions=(1,), aliases={})
    foreign = ModelVersion.objects.get(model=other)
    for fields in ({"version": foreign}, {"alias": "champion", "canary_version": foreign, "canary_percent": 5}):
        with pytest.raises(ValidationError) as refused:
            deployment_create(actor=cast.dave, model=fraud, server=server, **fields)
        assert refused.value.code == "invalid_version"
    assert not Deployment.objects.exists()


def test_the_database_enforces_alias_xor_version_and_canary_consistency(fraud, server):
    v2 = ModelVersion.objects.get(model=fraud, version=2)
    for fields in (
        {"alias": "champion", "version": v2},
        {"alias": ""},
        {"alias": "champion", "canary_percent": 10},
        {"alias": "champion", "canary_version": v2, "canary_percent": 0},
        {"alias": "champion", "price_per_request": Decimal("-1")},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            Deployment.objects.create(model=fraud, server=server, **fields)
    Deployment.objects.create(model=fraud, server=server, alias="champion")
    with pytest.raises(IntegrityError), transaction.atomic():
        Deployment.objects.create(model=fraud, server=server, alias="champion")
    Deployment.objects.create(model=fraud, server=server, alias="champion", is_active=False)


def test_update_moves_the_server_and_changes_the_canary_and_prices(as_dave, fraud, server, make_server):
    other = make_server("gpu-b")
    created = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "alias": "champion", "server": server.pk})
    path = f"/api/v1/deployments/{created.json()['id']}"
    body = _patch(
        as_dave, path, {"server": other.pk, "canary_version": 3, "canary_percent": 25, "price_per_gpu_second": "0.5"}
    ).json()
    assert (body["server"]["name"], body["canary_version"], body["canary_percent"]) == ("gpu-b", 3, 25)
    assert body["price_per_gpu_second"] == "0.500000"
    body = _patch(as_dave, path, {"canary_version": None}).json()
    assert (body["canary_version"], body["canary_percent"]) == (None, 0)
    refused = _patch(as_dave, path, {"canary_percent": 20})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_canary"


def test_a_deactivated_deployment_cannot_be_changed(as_dave, fraud, server):
    created = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "alias": "champion", "server": server.pk})
    path = f"/api/v1/deployments/{created.json()['id']}"
    assert _post(as_dave, f"{path}/deactivate").json()["is_active"] is False
    refused = _patch(as_dave, path, {"price_per_request": "1"})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "deployment_inactive"
    assert Deployment.objects.get().price_per_request == 0


@pytest.mark.parametrize("member", ["victor", "olivia"])
def test_roles_that_only_read_cannot_deploy(client_a, cast, fraud, server, member):
    existing = deployment_create(actor=cast.alice, model=fraud, server=server, alias="challenger")
    client_a.force_login(getattr(cast, member))
    assert client_a.get("/api/v1/deployments").json()["count"] == 1
    for response in (
        _post(client_a, "/api/v1/deployments", {"model": "fraud", "alias": "champion", "server": server.pk}),
        _patch(client_a, f"/api/v1/deployments/{existing.pk}", {"price_per_request": "9"}),
        _post(client_a, f"/api/v1/deployments/{existing.pk}/deactivate"),
    ):
        assert response.status_code == 403
    existing.refresh_from_db()
    assert (existing.is_active, existing.price_per_request, Deployment.objects.count()) == (True, 0, 1)


def test_a_key_without_models_write_cannot_deploy(client_a, make_key, fraud, server, cast):
    existing = deployment_create(actor=cast.alice, model=fraud, server=server, alias="challenger")
    _, secret = make_key(cast.dave, scopes=["models:read"])
    assert client_a.get(f"/api/v1/deployments/{existing.pk}", **bearer(secret)).status_code == 200
    for response in (
        _post(
            client_a,
            "/api/v1/deployments",
            {"model": "fraud", "alias": "champion", "server": server.pk},
            **bearer(secret),
        ),
        _post(client_a, f"/api/v1/deployments/{existing.pk}/deactivate", **bearer(secret)),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "missing_scope"
    with tenant_context(cast.tenant_a):
        assert list(Deployment.objects.values_list("is_active", flat=True)) == [True]


def test_tenant_b_cannot_see_or_touch_a_deployment_of_a(client_b, cast, fraud, server):
    deployment = deployment_create(actor=cast.alice, model=fraud, server=server, alias="champion")
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)
    assert client_b.get("/api/v1/deployments").json()["count"] == 0
    for response in (
        client_b.get(f"/api/v1/deployments/{deployment.pk}"),
        _patch(client_b, f"/api/v1/deployments/{deployment.pk}", {"price_per_request": "9"}),
        _post(client_b, f"/api/v1/deployments/{deployment.pk}/deactivate"),
    ):
        assert response.status_code == 404
    with tenant_context(cast.tenant_a):
        deployment.refresh_from_db()
        assert (deployment.is_active, deployment.price_per_request) == (True, 0)


def test_deployment_changes_are_audited_with_their_actor(as_dave, fraud, server, cast):
    created = _post(as_dave, "/api/v1/deployments", {"model": "fraud", "alias": "champion", "server": server.pk})
    path = f"/api/v1/deployments/{created.json()['id']}"
    _patch(as_dave, path, {"price_per_request": "0.25"})
    _post(as_dave, f"{path}/deactivate")
    deployment = Deployment.objects.get()
    entries = list(LogEntry.objects.get_for_object(deployment).order_by("timestamp"))
    assert [entry.action for entry in entries] == [
        LogEntry.Action.CREATE,
        LogEntry.Action.UPDATE,
        LogEntry.Action.UPDATE,
    ]
    assert {entry.actor_id for entry in entries} == {cast.dave.pk}
    assert "price_per_request" in entries[1].changes_dict
    assert "is_active" in entries[2].changes_dict
