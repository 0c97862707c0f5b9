"""Every API error is JSON with a stable code, a message and the request id, at the right status."""

import pytest
from django.test import Client, override_settings

from apps.apikeys.services import apikey_create
from tests.helpers import host_of


@pytest.fixture
def secret(cast, in_tenant_a):
    _, secret = apikey_create(actor=cast.alice, name="rules", scopes=["keys:manage", "inference"])
    return secret


@pytest.fixture
def api(client_a, secret):
    def call(method: str, path: str, **kwargs):
        headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}", **kwargs.pop("headers", {})}
        return getattr(client_a, method)(path, **kwargs, **headers)

    return call


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["request_id"] == response["X-Request-ID"]
    return error


def test_400_malformed_json(api):
    assert_error(api("post", "/api/v1/keys", data="{nope", content_type="application/json"), 400, "malformed_json")


def test_401_without_credentials(client_a):
    assert_error(client_a.get("/api/v1/keys"), 401, "not_authenticated")


def test_403_missing_scope(client_a, cast, in_tenant_a):
    _, secret = apikey_create(actor=cast.alice, name="narrow", scopes=["inference"])
    assert_error(client_a.get("/api/v1/keys", HTTP_X_API_KEY=secret), 403, "missing_scope")


def test_404_unknown_api_path_and_unknown_object(api):
    assert_error(api("get", "/api/v1/nothing-here"), 404, "not_found")
    assert_error(api("get", "/api/v1/keys/987654"), 404, "not_found")


def test_405_wrong_method(api):
    error = assert_error(api("delete", "/api/v1/me"), 405, "method_not_allowed")
    assert "DELETE" in error["message"]


@override_settings(API_MAX_BODY_BYTES=1000)
def test_413_body_too_large(api):
    body = '{"name": "' + "x" * 2000 + '", "scopes": ["inference"]}'
    assert_error(api("post", "/api/v1/keys", data=body, content_type="application/json"), 413, "payload_too_large")


def test_415_wrong_content_type(api):
    response = api("post", "/api/v1/keys", data="name=x", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_422_validation_names_the_field(api):
    error = assert_error(
        api("post", "/api/v1/keys", data={"name": "x"}, content_type="application/json"), 422, "validation_error"
    )
    assert "scopes" in error["message"]
    assert "scopes" in error["fields"]


def test_429_over_the_limit_with_retry_after(client_a, cast, in_tenant_a):
    _, secret = apikey_create(actor=cast.alice, name="tiny", scopes=["inference"], requests_per_minute=2)
    ok = [client_a.get("/api/v1/me", HTTP_X_API_KEY=secret) for _ in range(2)]
    assert [response.status_code for response in ok] == [200, 200]
    assert ok[0]["RateLimit-Limit"] == "2"
    assert ok[0]["RateLimit-Remaining"] == "1"
    assert ok[1]["RateLimit-Remaining"] == "0"
    assert 1 <= int(ok[1]["RateLimit-Reset"]) <= 60
    refused = client_a.get("/api/v1/me", HTTP_X_API_KEY=secret)
    assert_error(refused, 429, "rate_limited")
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert refused["RateLimit-Remaining"] == "0"


def test_request_id_is_echoed_when_well_formed_and_replaced_otherwise(api, client_a):
    assert (
        api("get", "/api/v1/me", headers={"HTTP_X_REQUEST_ID": "client-req-12345"})["X-Request-ID"]
        == "client-req-12345"
    )
    replaced = api("get", "/api/v1/me", headers={"HTTP_X_REQUEST_ID": "bad id with spaces<script>"})["X-Request-ID"]
    assert len(replaced) == 32
    assert client_a.get("/login/")["X-Request-ID"]


def test_unknown_host_api_answer_carries_a_request_id(db):
    response = Client(HTTP_HOST="ghost.localhost").get("/api/v1/me")
    assert_error(response, 404, "not_found")


def test_suspended_tenant_api_answer_is_json(cast):
    from apps.tenants.services import tenant_set_status

    tenant_set_status(actor=None, tenant=cast.tenant_a, status="suspended")
    response = Client(HTTP_HOST=host_of(cast.tenant_a)).get("/api/v1/me")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"


def test_openapi_schema_and_offline_docs(client_a):
    schema = client_a.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert {"/api/v1/me", "/api/v1/keys", "/api/v1/keys/{key_id}/rotate"} <= set(document["paths"])
    assert {"BearerKey", "HeaderKey"} <= set(document["components"]["securitySchemes"])
    for path in ("/api/v1/docs/", "/api/v1/redoc/"):
        page = client_a.get(path)
        assert page.status_code == 200
        assert b"cdn." not in page.content.lower()
        assert b"/static/drf_spectacular_sidecar/" in page.content


def test_server_faults_answer_json_without_details(api, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("apps.api.views.MeView.get", explode)
    client_error = api("get", "/api/v1/me")
    error = assert_error(client_error, 500, "internal_error")
    assert "secret internals" not in error["message"]
