"""The OpenAI-compatible API through Django's test client: shapes, refusals and routing before any queue."""

from __future__ import annotations

import pytest
from django.db import connection
from django_tenants.utils import tenant_context

from apps.compliance.models import InferenceRecord
from apps.serving.models import ServerReplica
from apps.serving.services import deployment_create, server_create
from tests.helpers import bearer
from tests.serving.conftest import make_model

CHAT = {"model": "llm", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def deployed(cast, in_tenant_a):
    """`llm` on an OpenAI server whose replica is down, and `tabular` on an MLflow server."""
    llm = make_model("llm", aliases={"champion": 1})
    openai_server = server_create(
        actor=cast.alice, name="vllm", protocol="openai", gpu_pool="a", replica_urls=["http://10.9.9.9:1"]
    )
    deployment_create(actor=cast.alice, model=llm, server=openai_server, alias="champion")
    ServerReplica.objects.filter(server=openai_server).update(is_up=False)
    tabular = make_model("tabular", aliases={"champion": 1})
    mlflow_server = server_create(
        actor=cast.alice, name="cpu", protocol="mlflow", gpu_pool="a", replica_urls=["http://10.9.9.8:1"]
    )
    deployment_create(actor=cast.alice, model=tabular, server=mlflow_server, alias="champion")
    connection.set_schema_to_public()


def _chat(client, secret, body=None, **extra):
    return client.post(
        "/v1/chat/completions", body if body is not None else CHAT, content_type="application/json",
        **(bearer(secret) if secret else {}), **extra,
    )  # fmt: skip


def _assert_openai_error(response, status: int, kind: str, code: str) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == (kind, code)
    return error


def test_models_lists_only_openai_deployments(deployed, client_a, make_key):
    _, secret = make_key()
    answer = client_a.get("/v1/models", **bearer(secret)).json()
    assert answer["object"] == "list"
    assert [model["id"] for model in answer["data"]] == ["llm"]


def test_errors_on_v1_come_in_openai_shape(deployed, client_a, make_key):
    _, secret = make_key()
    _, reader = make_key(scopes=("models:read",))
    _assert_openai_error(_chat(client_a, None), 401, "authentication_error", "not_authenticated")
    _assert_openai_error(_chat(client_a, "aip_bogus"), 401, "authentication_error", "invalid_api_key")
    _assert_openai_error(_chat(client_a, reader), 403, "permission_error", "missing_scope")
    _assert_openai_error(client_a.get("/v1/nothing", **bearer(secret)), 404, "invalid_request_error", "not_found")
    error = _assert_openai_error(_chat(client_a, secret, {"model": "llm"}), 400, "invalid_request_error",
                                 "invalid_request")  # fmt: skip
    assert error["param"] == "messages"


def test_refusals_are_recorded_and_nothing_is_queued(deployed, client_a, make_key, cast):
    _, secret = make_key()
    broken = client_a.post("/v1/chat/completions", "{", content_type="application/json", **bearer(secret))
    tabular = _chat(client_a, secret, {**CHAT, "model": "tabular"})  # an MLflow model is not reachable here
    down = _chat(client_a, secret)

    _assert_openai_error(broken, 400, "invalid_request_error", "malformed_json")
    _assert_openai_error(tabular, 404, "invalid_request_error", "model_not_found")
    _assert_openai_error(down, 503, "server_error", "model_unavailable")
    with tenant_context(cast.tenant_a):
        records = {record.request_id: record for record in InferenceRecord.objects.all()}
    for response, status in ((broken, "refused"), (tabular, "refused"), (down, "unavailable")):
        record = records[response["X-Request-ID"]]
        assert record.status == status
        assert record.dispatched_at is None


def test_another_tenant_sees_nothing(deployed, client_b, make_key, cast):
    _, secret = make_key(tenant=cast.tenant_b)
    assert client_b.get("/v1/models", **bearer(secret)).json()["data"] == []
    _assert_openai_error(_chat(client_b, secret), 404, "invalid_request_error", "model_not_found")


def test_predict_on_an_openai_model_points_to_the_openai_api(deployed, client_a, make_key):
    _, secret = make_key()
    response = client_a.post(
        "/api/v1/models/llm/predict", {"inputs": [1]}, content_type="application/json", **bearer(secret)
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "wrong_api"
    assert "/v1/chat/completions" in response.json()["error"]["message"]
