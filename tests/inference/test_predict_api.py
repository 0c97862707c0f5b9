"""The web half of predict through Django's test client: what is refused before any queue, recorded, and cheap."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from apps.compliance.models import InferenceRecord
from apps.serving.models import ServerReplica
from apps.serving.services import deployment_create, server_create
from tests.helpers import PASSWORD, bearer, host_of, login
from tests.serving.conftest import make_model

TABLE = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}


@pytest.fixture
def deployed(cast, in_tenant_a):
    """Model `scorer` (v1..v3, champion on 3) on a server whose only replica is known to be down."""
    model = make_model("scorer", aliases={"champion": 3})
    server = server_create(
        actor=cast.alice, name="gpu-a", protocol="mlflow", gpu_pool="a", replica_urls=["http://10.9.9.9:1"]
    )
    deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    ServerReplica.objects.filter(server=server).update(is_up=False)
    connection.set_schema_to_public()
    return model


def _predict(client, secret, body=None, *, query="", **extra):
    return client.post(
        f"/api/v1/models/scorer/predict{query}", body if body is not None else TABLE,
        content_type="application/json", **bearer(secret), **extra,
    )  # fmt: skip


def _record(cast, request_id: str) -> InferenceRecord:
    with tenant_context(cast.tenant_a):
        return InferenceRecord.objects.get(request_id=request_id)


def test_no_live_replica_is_a_503_with_retry_after_recorded_without_dispatch(deployed, client_a, make_key, cast):
    _, secret = make_key()

    response = _predict(client_a, secret)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "model_unavailable"
    assert int(response["Retry-After"]) >= 1
    record = _record(cast, response.json()["error"]["request_id"])
    assert (record.status, record.model_version, record.alias) == ("unavailable", 3, "champion")
    assert record.dispatched_at is None


def test_the_signature_is_that_of_the_version_the_pin_selects(deployed, client_a, make_key, cast):
    with tenant_context(cast.tenant_a):
        deployed.versions.filter(version=1).update(signature={"inputs": [{"name": "legacy", "type": "double"}]})
    _, pinned = make_key(model_pins={"scorer": "1"})
    _, unpinned = make_key()

    refused = _predict(client_a, pinned)  # column x fits champion (v3), not v1
    assert _predict(client_a, unpinned).status_code == 503  # passed validation, found no replica

    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "signature_mismatch"
    assert "'x'" in error["message"]
    record = _record(cast, error["request_id"])
    assert (record.model_version, record.alias, record.status) == (1, "", "refused")


def test_a_refusal_costs_the_record_and_nothing_else(deployed, client_a, make_key):
    _, secret = make_key()
    _predict(client_a, secret, {"nope": 1})  # warms the key and route caches

    with CaptureQueriesContext(connection) as queries:
        response = _predict(client_a, secret, {"nope": 1})

    assert response.status_code == 422
    statements = [query["sql"].split()[0] for query in queries.captured_queries]
    # The chain append: lock the head, insert the record, move the head (plus its savepoint and search_path).
    assert [s for s in statements if s not in ("SAVEPOINT", "RELEASE", "SET")] == ["SELECT", "INSERT", "UPDATE"]


def test_the_client_request_id_is_not_reused_for_the_record(deployed, client_a, make_key, cast):
    _, secret = make_key()
    first = _predict(client_a, secret, {"nope": 1}, HTTP_X_REQUEST_ID="client-chosen-id-1")
    second = _predict(client_a, secret, {"nope": 1}, HTTP_X_REQUEST_ID="client-chosen-id-1")

    ids = {first.json()["error"]["request_id"], second.json()["error"]["request_id"]}
    assert len(ids) == 2
    assert ids == {first["X-Request-ID"], second["X-Request-ID"]}
    for request_id in ids:
        assert _record(cast, request_id).status == "refused"


def test_portal_members_who_may_hold_keys_may_predict_and_others_may_not(deployed, client_a, cast):
    login(client_a, cast.dave)
    assert client_a.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json").status_code == 503

    client_a.logout()
    login(client_a, cast.victor)
    refused = client_a.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"


def test_a_session_predict_needs_the_csrf_token(deployed, cast):
    browser = Client(HTTP_HOST=host_of(cast.tenant_a), enforce_csrf_checks=True)
    login_page = browser.get("/login/")
    token = login_page.cookies["csrftoken"].value
    assert browser.post(
        "/login/", {"username": cast.dave.email, "password": PASSWORD, "csrfmiddlewaretoken": token}
    ).status_code == 302  # fmt: skip
    token = browser.cookies["csrftoken"].value

    forged = browser.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json")
    sent = browser.post("/api/v1/models/scorer/predict", TABLE, content_type="application/json", HTTP_X_CSRFTOKEN=token)

    assert forged.status_code == 403
    assert "CSRF" in forged.json()["error"]["message"]
    assert sent.status_code == 503  # through every check, to the replica that is down


def test_another_tenant_cannot_reach_or_detect_the_model(deployed, client_b, make_key, cast):
    _, secret = make_key(tenant=cast.tenant_b)

    response = _predict(client_b, secret)
    unknown = client_b.post(
        "/api/v1/models/never-was/predict", TABLE, content_type="application/json", **bearer(secret)
    )

    assert response.status_code == unknown.status_code == 404
    assert response.json()["error"]["code"] == unknown.json()["error"]["code"] == "model_not_found"
