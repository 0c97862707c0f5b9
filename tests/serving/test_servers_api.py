"""/api/v1/servers: who may register, change and delete model servers, and what is never shown or stored plainly."""

import pytest
from auditlog.models import LogEntry
from django_tenants.utils import tenant_context

from apps.serving.models import Deployment, ModelServer, ServerReplica
from apps.serving.secrets import secret_decrypt
from apps.serving.services import deployment_create
from tests.helpers import bearer
from tests.serving.conftest import make_model

SECRET = "Bearer sk-model-server-4f7a9c2e"


def _post(client, path, body=None, **extra):
    return client.post(path, body or {}, content_type="application/json", **extra)


def _patch(client, path, body, **extra):
    return client.patch(path, body, content_type="application/json", **extra)


def _server_body(**changes) -> dict:
    body = {
        "name": "gpu-a",
        "protocol": "openai",
        "gpu_pool": "h100",
        "accelerator": "H100 80GB",
        "replica_urls": ["http://10.0.0.1:8000", "https://vllm-1.internal:8443/"],
        "auth_header_name": "Authorization",
        "auth_header_value": SECRET,
    }
    return {**body, **changes}


@pytest.fixture
def as_dave(client_a, cast, in_tenant_a):
    client_a.force_login(cast.dave)
    return client_a


@pytest.fixture
def as_victor(client_a, cast, in_tenant_a):
    client_a.force_login(cast.victor)
    return client_a


def test_developer_registers_a_server_and_sees_it_listed(as_dave, cast):
    response = _post(as_dave, "/api/v1/servers", _server_body())
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["queue_name"] == "pool.h100"
    assert body["has_auth_header"] is True
    assert [replica["base_url"] for replica in body["replicas"]] == [
        "http://10.0.0.1:8000",
        "https://vllm-1.internal:8443",
    ]
    assert {replica["is_up"] for replica in body["replicas"]} == {None}
    assert body["created_by"] == cast.dave.email
    listed = as_dave.get("/api/v1/servers").json()
    assert listed["count"] == 1
    assert listed["results"][0]["name"] == "gpu-a"
    assert ModelServer.objects.get().created_by == cast.dave


def test_the_auth_header_value_is_never_returned_and_is_stored_encrypted(as_dave):
    server_id = _post(as_dave, "/api/v1/servers", _server_body()).json()["id"]
    for response in (
        as_dave.get(f"/api/v1/servers/{server_id}"),
        as_dave.get("/api/v1/servers"),
        _patch(as_dave, f"/api/v1/servers/{server_id}", {"accelerator": "H200"}),
    ):
        assert response.status_code == 200
        assert SECRET not in response.content.decode()
        assert "auth_header_value" not in response.content.decode()
    row = ModelServer.objects.filter(pk=server_id).values().get()
    assert SECRET not in str(row)
    assert "sk-model-server" not in str(row)
    assert secret_decrypt(row["auth_header_value_encrypted"]) == SECRET


def test_the_auth_header_is_kept_replaced_or_cleared(as_dave):
    server_id = _post(as_dave, "/api/v1/servers", _server_body()).json()["id"]
    _patch(as_dave, f"/api/v1/servers/{server_id}", {"max_concurrency": 8})
    assert secret_decrypt(ModelServer.objects.get(pk=server_id).auth_header_value_encrypted) == SECRET
    _patch(as_dave, f"/api/v1/servers/{server_id}", {"auth_header_value": "Bearer new"})
    assert secret_decrypt(ModelServer.objects.get(pk=server_id).auth_header_value_encrypted) == "Bearer new"
    body = _patch(as_dave, f"/api/v1/servers/{server_id}", {"auth_header_value": ""}).json()
    assert body["has_auth_header"] is False
    assert body["auth_header_name"] == ""
    assert ModelServer.objects.get(pk=server_id).auth_header_value_encrypted == ""


def test_update_replaces_the_replicas_as_a_set_and_keeps_the_health_of_those_kept(as_dave):
    server_id = _post(as_dave, "/api/v1/servers", _server_body()).json()["id"]
    kept = ServerReplica.objects.get(base_url="http://10.0.0.1:8000")
    ServerReplica.objects.filter(pk=kept.pk).update(is_up=True)
    body = _patch(
        as_dave, f"/api/v1/servers/{server_id}", {"replica_urls": ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]}
    ).json()
    assert [(replica["base_url"], replica["is_up"]) for replica in body["replicas"]] == [
        ("http://10.0.0.1:8000", True),
        ("http://10.0.0.2:8000", None),
    ]
    assert ServerReplica.objects.get(base_url="http://10.0.0.1:8000").pk == kept.pk


@pytest.mark.parametrize(
    "urls",
    [
        ["ftp://10.0.0.1/models"],
        ["http://10.0.0.1:8000", "file:///etc/passwd"],
        ["10.0.0.1:8000"],
        ["http://user:pw@10.0.0.1:8000"],
        ["http://10.0.0.1:99999"],
        ["http://bad host/"],
    ],
)
def test_replica_urls_must_be_http_or_https_and_nothing_is_created(as_dave, urls):
    response = _post(as_dave, "/api/v1/servers", _server_body(replica_urls=urls))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_replica_url"
    assert not ModelServer.objects.exists()
    assert not ServerReplica.objects.exists()


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"protocol": "grpc"}, "validation_error"),
        ({"gpu_pool": "H100 pool"}, "invalid_gpu_pool"),
        ({"name": "Bad Name"}, "invalid_server_name"),
        ({"replica_urls": []}, "validation_error"),
        ({"auth_header_name": "", "auth_header_value": "secret"}, "invalid_auth_header"),
        ({"auth_header_value": "a\r\nX-Injected: 1"}, "invalid_auth_header"),
        ({"request_timeout_seconds": 0}, "validation_error"),
    ],
)
def test_invalid_server_input_is_422_and_creates_nothing(as_dave, changes, code):
    response = _post(as_dave, "/api/v1/servers", _server_body(**changes))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert not ModelServer.objects.exists()


def test_a_name_is_unique_per_tenant(as_dave, cast, make_server):
    assert _post(as_dave, "/api/v1/servers", _server_body()).status_code == 201
    duplicate = _post(as_dave, "/api/v1/servers", _server_body(replica_urls=["http://10.9.9.9"]))
    assert duplicate.status_code == 422
    assert duplicate.json()["error"]["code"] == "name_taken"
    with tenant_context(cast.tenant_b):
        make_server("gpu-a", actor=cast.charlie)
        assert ModelServer.objects.count() == 1


def test_viewer_reads_but_cannot_change_anything(as_victor, cast, make_server):
    server = make_server()
    assert as_victor.get("/api/v1/servers").json()["count"] == 1
    assert as_victor.get(f"/api/v1/servers/{server.pk}").status_code == 200
    for response in (
        _post(as_victor, "/api/v1/servers", _server_body(name="other")),
        _patch(as_victor, f"/api/v1/servers/{server.pk}", {"gpu_pool": "t4"}),
        as_victor.delete(f"/api/v1/servers/{server.pk}"),
        _post(as_victor, f"/api/v1/servers/{server.pk}/probe"),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    server.refresh_from_db()
    assert (server.gpu_pool, ModelServer.objects.count()) == ("a100", 1)
    assert ServerReplica.objects.get().last_checked_at is None


def test_a_key_without_models_write_reads_but_cannot_write(client_a, make_key, make_server, in_tenant_a):
    server = make_server()
    _, secret = make_key(scopes=["models:read"])
    assert client_a.get("/api/v1/servers", **bearer(secret)).status_code == 200
    for response in (
        _post(client_a, "/api/v1/servers", _server_body(name="other"), **bearer(secret)),
        _patch(client_a, f"/api/v1/servers/{server.pk}", {"gpu_pool": "t4"}, **bearer(secret)),
        client_a.delete(f"/api/v1/servers/{server.pk}", **bearer(secret)),
    ):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "missing_scope"
    server.refresh_from_db()
    assert (server.gpu_pool, ModelServer.objects.count()) == ("a100", 1)


def test_a_key_without_models_read_cannot_list(client_a, make_key, in_tenant_a):
    _, secret = make_key(scopes=["inference"])
    response = client_a.get("/api/v1/servers", **bearer(secret))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "missing_scope"


def test_a_writing_key_of_a_developer_manages_servers(client_a, make_key, cast, in_tenant_a):
    _, secret = make_key(cast.dave, scopes=["models:read", "models:write"])
    response = _post(client_a, "/api/v1/servers", _server_body(), **bearer(secret))
    assert response.status_code == 201
    server = ModelServer.objects.get()
    assert server.created_by == cast.dave
    assert client_a.delete(f"/api/v1/servers/{server.pk}", **bearer(secret)).status_code == 204
    assert not ModelServer.objects.exists()
    assert not ServerReplica.objects.exists()


def test_a_server_in_use_cannot_be_deleted(as_dave, cast, make_server):
    server = make_server()
    model = make_model("fraud", aliases={"champion": 1})
    deployment = deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    response = as_dave.delete(f"/api/v1/servers/{server.pk}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "server_in_use"
    assert ModelServer.objects.filter(pk=server.pk).exists()
    Deployment.objects.filter(pk=deployment.pk).update(is_active=False)
    response = as_dave.delete(f"/api/v1/servers/{server.pk}")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "server_has_deployments"


def test_tenant_b_cannot_see_or_touch_a_server_of_a(client_b, cast, make_server):
    with tenant_context(cast.tenant_a):
        server = make_server()
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)
    assert client_b.get("/api/v1/servers").json()["count"] == 0
    for response in (
        client_b.get(f"/api/v1/servers/{server.pk}"),
        _patch(client_b, f"/api/v1/servers/{server.pk}", {"gpu_pool": "stolen"}),
        client_b.delete(f"/api/v1/servers/{server.pk}"),
        _post(client_b, f"/api/v1/servers/{server.pk}/probe"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    with tenant_context(cast.tenant_a):
        server.refresh_from_db()
        assert server.gpu_pool == "a100"


def test_server_changes_are_audited_with_the_actor_and_without_the_secret(as_dave, cast):
    server_id = _post(as_dave, "/api/v1/servers", _server_body()).json()["id"]
    _patch(as_dave, f"/api/v1/servers/{server_id}", {"auth_header_value": "Bearer rotated-77", "gpu_pool": "h200"})
    server = ModelServer.objects.get(pk=server_id)
    entries = list(LogEntry.objects.get_for_object(server).order_by("timestamp"))
    assert [entry.action for entry in entries] == [LogEntry.Action.CREATE, LogEntry.Action.UPDATE]
    assert {entry.actor_id for entry in entries} == {cast.dave.pk}
    assert "gpu_pool" in entries[1].changes_dict
    assert "auth_header_changed_at" in entries[1].changes_dict
    replicas = LogEntry.objects.filter(content_type__model="serverreplica")
    assert replicas.count() == 2
    assert {entry.actor_id for entry in replicas} == {cast.dave.pk}
    everything = " ".join(str(entry.changes) + str(entry.serialized_data or "") for entry in LogEntry.objects.all())
    assert "auth_header_value" not in everything
    assert server.auth_header_value_encrypted not in everything
    for secret in (SECRET, "Bearer rotated-77", "sk-model-server", "rotated-77"):
        assert secret not in everything
