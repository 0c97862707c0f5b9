"""route_resolve: where a request for a model goes, read from Redis, and never stale after a change."""

from decimal import Decimal

import pytest
from django.db import connection
from django_tenants.utils import tenant_context

from apps.registry.models import ModelAlias, ModelVersion
from apps.serving import selectors
from apps.serving.selectors import Route, route_resolve, routes_forget
from apps.serving.services import deployment_create, deployment_deactivate, deployment_update, server_update
from config.redis import get_redis
from tests.serving.conftest import make_model


@pytest.fixture
def fraud(in_tenant_a):
    return make_model("fraud", versions=(1, 2, 3), aliases={"champion": 2, "challenger": 3})


@pytest.fixture
def gpu(make_server, in_tenant_a):
    return make_server(
        "gpu-a",
        protocol="openai",
        gpu_pool="h100",
        replica_urls=["http://10.0.0.1:8000", "http://10.0.0.2:8000"],
        request_timeout_seconds=12,
    )


@pytest.fixture
def champion(fraud, gpu, cast):
    return deployment_create(
        actor=cast.alice,
        model=fraud,
        server=gpu,
        alias="champion",
        canary_version=ModelVersion.objects.get(model=fraud, version=3),
        canary_percent=10,
        price_per_request=Decimal("0.002"),
    )


def test_by_default_the_champion_alias_is_resolved_to_its_version_and_server(champion, fraud, gpu):
    route = route_resolve(model_name="fraud")
    assert isinstance(route, Route)
    assert (route.model_name, route.model_id, route.mlflow_name) == ("fraud", fraud.pk, "alpha__fraud")
    assert (route.alias, route.version, route.run_id) == ("champion", 2, "run-fraud-2")
    assert (route.deployment_id, route.server_id, route.protocol) == (champion.pk, gpu.pk, "openai")
    assert route.queue_name == "pool.h100"
    assert route.replica_urls == ("http://10.0.0.1:8000", "http://10.0.0.2:8000")
    assert route.timeout_seconds == 12
    assert (route.canary_version, route.canary_percent, route.canary_run_id) == (3, 10, "run-fraud-3")
    assert route.prices.per_request == Decimal("0.002")
    assert route.signature["version"] == 2
    assert route_resolve(model_name="fraud", alias="champion") == route


def test_an_alias_without_a_deployment_of_its_own_reaches_the_deployment_of_its_version(fraud, gpu, cast):
    v3 = ModelVersion.objects.get(model=fraud, version=3)
    deployment = deployment_create(actor=cast.alice, model=fraud, server=gpu, version=v3)
    route = route_resolve(model_name="fraud", alias="challenger")
    assert (route.alias, route.version, route.deployment_id) == ("challenger", 3, deployment.pk)
    assert route_resolve(model_name="fraud", alias="champion") is None


def test_an_explicit_version_wins_and_uses_its_own_deployment(champion, fraud, make_server, cast):
    other = make_server("gpu-b", replica_urls=["http://10.0.1.1:8000"])
    v3 = ModelVersion.objects.get(model=fraud, version=3)
    pinned = deployment_create(actor=cast.alice, model=fraud, server=other, version=v3)
    route = route_resolve(model_name="fraud", alias="champion", version=3)
    assert (route.alias, route.version, route.run_id) == (None, 3, "run-fraud-3")
    assert (route.deployment_id, route.server_id) == (pinned.pk, other.pk)
    assert route.canary_version is None


def test_a_pinned_version_without_its_own_deployment_falls_back_to_the_alias_deployment(champion, gpu):
    route = route_resolve(model_name="fraud", version=1)
    assert (route.version, route.run_id, route.alias) == (1, "run-fraud-1", None)
    assert (route.deployment_id, route.server_id) == (champion.pk, gpu.pk)
    assert (route.canary_version, route.canary_percent) == (None, 0)
    assert route.signature["version"] == 1


def test_nothing_routes_to_what_does_not_exist_or_is_archived(champion, fraud):
    assert route_resolve(model_name="nope") is None
    assert route_resolve(model_name="fraud", version=9) is None
    assert route_resolve(model_name="fraud", alias="unknown") is None
    assert route_resolve(model_name="fraud", alias="bad:alias") is None
    assert route_resolve(model_name="fraud*") is None
    ModelVersion.objects.filter(model=fraud, version=1).update(status=ModelVersion.Status.ARCHIVED)
    routes_forget(model=fraud)
    assert route_resolve(model_name="fraud", version=1) is None


def test_a_warm_route_costs_no_database_query(champion, django_assert_num_queries):
    first = route_resolve(model_name="fraud")
    pinned = route_resolve(model_name="fraud", version=1)
    assert route_resolve(model_name="nope") is None
    with django_assert_num_queries(0):
        assert route_resolve(model_name="fraud") == first
        assert route_resolve(model_name="fraud", version=1) == pinned
        assert route_resolve(model_name="nope") is None


def test_an_alias_move_is_seen_on_the_very_next_resolve_after_routes_forget(champion, fraud):
    assert route_resolve(model_name="fraud").version == 2
    assert route_resolve(model_name="fraud", version=3).version == 3
    ModelAlias.objects.filter(model=fraud, alias="champion").update(
        version=ModelVersion.objects.get(model=fraud, version=1)
    )
    assert route_resolve(model_name="fraud").version == 2  # cached until told
    routes_forget(model=fraud)
    assert route_resolve(model_name="fraud").version == 1
    assert not get_redis().exists("route:alpha:fraud:v3")


def test_deployment_writes_are_seen_on_the_very_next_resolve(champion, fraud, gpu, make_server, cast):
    other = make_server("gpu-b", gpu_pool="t4", replica_urls=["http://10.0.1.1:8000"])
    assert route_resolve(model_name="fraud").server_id == gpu.pk
    deployment_update(actor=cast.alice, deployment=champion, server=other, canary_version=None)
    route = route_resolve(model_name="fraud")
    assert (route.server_id, route.queue_name, route.canary_version) == (other.pk, "pool.t4", None)
    server_update(actor=cast.alice, server=other, replica_urls=["http://10.0.1.9:8000"], request_timeout_seconds=5)
    route = route_resolve(model_name="fraud")
    assert (route.replica_urls, route.timeout_seconds) == (("http://10.0.1.9:8000",), 5)
    deployment_deactivate(actor=cast.alice, deployment=champion)
    assert route_resolve(model_name="fraud") is None
    deployment_create(actor=cast.alice, model=fraud, server=gpu, alias="champion")
    assert route_resolve(model_name="fraud").server_id == gpu.pk


def test_a_route_built_while_a_change_lands_is_not_cached(champion, fraud, monkeypatch):
    build = selectors._route_build

    def build_then_change_lands(**kwargs):
        route = build(**kwargs)
        routes_forget(model=fraud)  # a concurrent write commits while this request was reading
        return route

    monkeypatch.setattr(selectors, "_route_build", build_then_change_lands)
    assert route_resolve(model_name="fraud").version == 2
    assert not get_redis().exists(f"route:{connection.schema_name}:fraud:champion")
    monkeypatch.setattr(selectors, "_route_build", build)
    route_resolve(model_name="fraud")
    assert get_redis().exists(f"route:{connection.schema_name}:fraud:champion")


def test_tenant_b_never_gets_a_route_of_tenant_a(champion, cast, make_server):
    assert route_resolve(model_name="fraud") is not None
    with tenant_context(cast.tenant_b):
        assert route_resolve(model_name="fraud") is None
        assert route_resolve(model_name="fraud", version=2) is None
        model = make_model("fraud", versions=(1,), aliases={"champion": 1}, schema="bravo")
        server = make_server("gpu-b", actor=cast.charlie, replica_urls=["http://10.2.0.1:8000"])
        deployment_create(actor=cast.charlie, model=model, server=server, alias="champion")
        route = route_resolve(model_name="fraud")
        assert (route.mlflow_name, route.server_id, route.replica_urls) == (
            "bravo__fraud",
            server.pk,
            ("http://10.2.0.1:8000",),
        )
    assert route_resolve(model_name="fraud").mlflow_name == "alpha__fraud"
