"""Health probes against real HTTP servers on loopback: up, down, what changes when, and what routing sees."""

import pytest
from django.db import connection

from apps.serving.health import replica_probe, servers_probe
from apps.serving.models import ServerReplica
from apps.serving.selectors import route_resolve
from apps.serving.services import deployment_create
from apps.serving.tasks import probe_servers, probe_servers_everywhere
from tests.serving.conftest import make_model


def test_a_probe_marks_a_live_replica_up_and_a_closed_port_down(make_server, health_stub, closed_url, in_tenant_a):
    stub = health_stub()
    make_server(replica_urls=[stub.url, closed_url])
    servers_probe()
    up, down = ServerReplica.objects.get(base_url=stub.url), ServerReplica.objects.get(base_url=closed_url)
    assert (up.is_up, up.last_error) == (True, "")
    assert down.is_up is False
    assert "ConnectError" in down.last_error
    assert up.last_checked_at is not None
    assert up.status_changed_at is not None
    assert down.status_changed_at is not None


def test_status_changed_at_moves_only_when_the_state_changes(make_server, health_stub, in_tenant_a):
    stub = health_stub()
    make_server(replica_urls=[stub.url])
    servers_probe()
    first = ServerReplica.objects.get()
    servers_probe()
    second = ServerReplica.objects.get()
    assert second.last_checked_at > first.last_checked_at
    assert second.status_changed_at == first.status_changed_at
    stub.ready = False
    servers_probe()
    third = ServerReplica.objects.get()
    assert (third.is_up, third.last_error) == (False, "HTTP 503 from /ping")
    assert third.status_changed_at > second.status_changed_at


def test_a_replica_going_down_leaves_the_route_at_once(make_server, health_stub, cast, in_tenant_a):
    steady, flaky = health_stub(), health_stub()
    server = make_server(replica_urls=[steady.url, flaky.url])
    model = make_model("fraud", aliases={"champion": 1})
    deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    both = tuple(sorted([steady.url, flaky.url]))
    assert route_resolve(model_name="fraud").replica_urls == both
    servers_probe()
    assert route_resolve(model_name="fraud").replica_urls == both
    flaky.ready = False
    servers_probe()
    assert route_resolve(model_name="fraud").replica_urls == (steady.url,)
    flaky.ready = True
    servers_probe()
    assert route_resolve(model_name="fraud").replica_urls == both


@pytest.mark.parametrize(
    ("protocol", "paths", "expected_up", "probed"),
    [
        ("mlflow", ("/ping",), True, ["/ping"]),
        ("mlflow", ("/health",), True, ["/ping", "/health"]),
        ("openai", ("/v1/models",), True, ["/v1/models"]),
        ("openai", ("/health",), True, ["/v1/models", "/health"]),
        ("kserve-v2", ("/v2/health/ready",), True, ["/v2/health/ready"]),
        ("kserve-v2", ("/ping",), False, ["/v2/health/ready"]),
    ],
)
def test_each_protocol_is_probed_on_its_own_endpoint(
    make_server, health_stub, in_tenant_a, protocol, paths, expected_up, probed
):
    stub = health_stub(paths=paths)
    make_server(protocol=protocol, replica_urls=[stub.url])
    assert replica_probe(replica=ServerReplica.objects.select_related("server").get()) is expected_up
    assert [path for path, _ in stub.seen] == probed


def test_a_not_ready_answer_is_down_without_trying_the_fallback(make_server, health_stub, in_tenant_a):
    stub = health_stub(paths=("/ping", "/health"), ready=False)
    make_server(replica_urls=[stub.url])
    assert replica_probe(replica=ServerReplica.objects.select_related("server").get()) is False
    assert [path for path, _ in stub.seen] == ["/ping"]


def test_the_probe_sends_the_servers_auth_header(make_server, health_stub, in_tenant_a):
    stub = health_stub()
    make_server(replica_urls=[stub.url], auth_header_name="X-Api-Token", auth_header_value="tok-123")
    servers_probe()
    assert stub.seen[0][1]["x-api-token"] == "tok-123"


def test_the_probe_endpoint_probes_now_and_answers_the_state(
    client_a, cast, make_server, health_stub, closed_url, in_tenant_a
):
    stub = health_stub()
    server = make_server(replica_urls=[stub.url, closed_url])
    client_a.force_login(cast.dave)
    body = client_a.post(f"/api/v1/servers/{server.pk}/probe", content_type="application/json").json()
    assert {replica["base_url"]: replica["is_up"] for replica in body["replicas"]} == {
        stub.url: True,
        closed_url: False,
    }


def test_the_probe_task_runs_in_its_tenant_and_the_fan_out_reaches_every_tenant(
    make_server, health_stub, cast, monkeypatch, in_tenant_a
):
    stub = health_stub()
    make_server(replica_urls=[stub.url])
    assert probe_servers() == 1
    assert ServerReplica.objects.get().is_up is True
    sent_from: list[str] = []
    monkeypatch.setattr(probe_servers, "delay", lambda: sent_from.append(connection.schema_name))
    connection.set_schema_to_public()
    assert probe_servers_everywhere() == 2
    assert sorted(sent_from) == ["alpha", "bravo"]
