"""The models, servers and deployments pages: what each role sees, what managers change, and what nobody else can."""

import io
import uuid
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_tenants.utils import tenant_context

from apps.registry.models import AliasChange, ModelAlias, ModelVersion, RegisteredModel
from apps.serving.models import Deployment, ModelServer, ServerReplica
from apps.serving.services import deployment_create, server_create
from tests.helpers import free_port
from tests.serving.conftest import make_model

HEADER_VALUE = "Bearer portal-test-secret-9f3c1a"


@pytest.fixture
def name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def as_dave(client_a, cast, in_tenant_a):
    client_a.force_login(cast.dave)
    return client_a


@pytest.fixture
def as_victor(client_a, cast, in_tenant_a):
    client_a.force_login(cast.victor)
    return client_a


def zipped(directory: Path) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in directory.rglob("*"):
            if path.is_file():
                bundle.write(path, "model/" + str(path.relative_to(directory)))
    buffer.seek(0)
    buffer.name = "model.zip"
    return buffer


def _server(cast, name="gpu-a", **fields) -> ModelServer:
    fields.setdefault("replica_urls", ["http://10.0.0.1:8080"])
    return server_create(actor=cast.alice, name=name, protocol="mlflow", gpu_pool="a100", **fields)


def _page(response) -> str:
    return response.content.decode()


# --- models ----------------------------------------------------------------------------------------------------


def test_models_list_shows_aliases_and_version_counts(as_dave, name):
    make_model(name, versions=(1, 2, 3), aliases={"champion": 2, "challenger": 3})
    RegisteredModel.objects.filter(name=name).update(description="Scores card payments")

    response = as_dave.get("/models/")

    assert response.status_code == 200
    page = _page(response)
    row = page[page.index(f'data-model="{name}"') :].split("</tr>")[0]
    assert "champion → v2" in row
    assert "challenger → v3" in row
    assert "Scores card payments" in row
    assert "<td>3</td>" in row
    assert 'action="" ' not in page
    assert "Create model" in page


def test_model_page_shows_versions_signature_aliases_run_and_history(as_dave, name, cast):
    model = make_model(name, versions=(1, 2), aliases={"champion": 2})
    ModelVersion.objects.filter(model=model, version=2).update(
        flavors=["python_function", "sklearn"],
        created_by=cast.dave,
        signature={
            "inputs": [
                {"name": "amount", "type": "double", "required": True},
                {"name": "country", "type": "string", "required": False},
            ]
        },
    )
    AliasChange.objects.create(
        model=model,
        alias="champion",
        kind="promote",
        from_version=1,
        to_version=2,
        reason="better AUC",
        actor=cast.dave,
    )

    response = as_dave.get(f"/models/{name}/")

    assert response.status_code == 200
    page = _page(response)
    v2 = page[page.index('data-version="2"') :].split('data-version="1"')[0]
    assert "<code>amount</code></td><td>double</td><td>yes</td>" in v2
    assert "<code>country</code></td><td>string</td><td>no</td>" in v2
    assert "sklearn" in v2
    assert "dave@alpha.example" in v2
    assert f'run <code class="run-id">run-{name}-2</code>' in v2
    assert f'href="http://127.0.0.1:5050/#/runs/run-{name}-2"' in v2
    assert '<span class="tag alias">champion</span>' in v2
    history = page[page.index('id="alias-history"') :]
    assert "v1 → v2" in history
    assert "better AUC" in history
    assert "promote" in history
    for form in ("Review promotion", "Review rollback", 'enctype="multipart/form-data"', "Archive"):
        assert form in page


def test_developer_creates_uploads_promotes_and_rolls_back(as_dave, name, cast, mlflow_store, iris_model_dir):
    created = as_dave.post("/models/", {"name": name, "description": "iris"})
    assert created.status_code == 302
    assert created["Location"] == f"/models/{name}/"
    for number in (1, 2):
        uploaded = as_dave.post(f"/models/{name}/versions/", {"file": zipped(iris_model_dir)}, follow=True)
        assert uploaded.status_code == 200
        assert f"Registered {name} v{number}." in _page(uploaded)
    page = _page(as_dave.get(f"/models/{name}/"))
    assert "<code>sepal_length</code></td><td>double</td>" in page

    for number, before in ((1, "(not set)"), (2, "v1")):
        review = as_dave.get(f"/models/{name}/promote/", {"version": number, "alias": "champion", "reason": "go"})
        assert review.status_code == 200
        assert f"champion: {before} → v{number}" in _page(review)
        assert ModelAlias.objects.filter(model__name=name).count() == number - 1
        done = as_dave.post(
            f"/models/{name}/promote/", {"version": number, "alias": "champion", "reason": "go", "confirmed": "yes"}
        )
        assert done.status_code == 302
    assert ModelAlias.objects.get(model__name=name, alias="champion").version.version == 2

    review = as_dave.get(f"/models/{name}/rollback/", {"alias": "champion", "reason": "v2 drifts"})
    assert review.status_code == 200
    assert "champion: v2 → v1" in _page(review)
    assert "v2 drifts" in _page(review)
    assert ModelAlias.objects.get(model__name=name, alias="champion").version.version == 2

    rolled = as_dave.post(
        f"/models/{name}/rollback/", {"alias": "champion", "reason": "v2 drifts", "confirmed": "yes"}, follow=True
    )

    assert rolled.status_code == 200
    assert "is rolled back" in _page(rolled)
    assert ModelAlias.objects.get(model__name=name, alias="champion").version.version == 1
    change = AliasChange.objects.filter(model__name=name).first()
    assert (change.kind, change.from_version, change.to_version) == ("rollback", 2, 1)
    assert change.reason == "v2 drifts"
    assert change.actor == cast.dave


def test_post_without_confirmation_only_asks(as_dave, name, cast):
    model = make_model(name, versions=(1, 2), aliases={"champion": 1})

    response = as_dave.post(f"/models/{name}/promote/", {"version": 2, "alias": "champion"})

    assert response.status_code == 200
    assert "champion: v1 → v2" in _page(response)
    assert ModelAlias.objects.get(model=model, alias="champion").version.version == 1
    assert not AliasChange.objects.filter(model=model).exists()


def test_rollback_needs_a_reason_and_an_earlier_version(as_dave, name, mlflow_store, cast):
    model = make_model(name, versions=(1,), aliases={"champion": 1})

    no_reason = as_dave.get(f"/models/{name}/rollback/", {"alias": "champion", "reason": ""})
    assert no_reason.status_code == 400
    assert "Say why you roll back." in _page(no_reason)

    nothing = as_dave.get(f"/models/{name}/rollback/", {"alias": "champion", "reason": "x"})
    assert nothing.status_code == 409
    assert "no earlier version to roll back to" in _page(nothing)

    forced = as_dave.post(f"/models/{name}/rollback/", {"alias": "champion", "reason": "x", "confirmed": "yes"})
    assert forced.status_code == 409
    assert "no earlier version to roll back to" in _page(forced)
    assert not AliasChange.objects.filter(model=model).exists()


def test_model_create_errors_rerender_the_form(as_dave, name, mlflow_store):
    bad = as_dave.post("/models/", {"name": "Not A Name"})
    assert bad.status_code == 400
    assert "lowercase letters" in _page(bad)
    assert as_dave.post("/models/", {"name": name}).status_code == 302

    clash = as_dave.post("/models/", {"name": name, "description": "again"})

    assert clash.status_code == 409
    assert "exists already" in _page(clash)
    assert RegisteredModel.objects.filter(name=name).count() == 1


def test_upload_of_something_that_is_not_a_model_is_400(as_dave, name, mlflow_store):
    as_dave.post("/models/", {"name": name})
    junk = io.BytesIO(b"not an archive")
    junk.name = "model.zip"

    response = as_dave.post(f"/models/{name}/versions/", {"file": junk})

    assert response.status_code == 400
    assert "Upload a .zip or .tar.gz" in _page(response)
    assert not ModelVersion.objects.filter(model__name=name).exists()


def test_archive_refuses_an_aliased_version_and_archives_a_free_one(as_dave, name, mlflow_store, iris_model_dir, cast):
    as_dave.post("/models/", {"name": name})
    for _ in range(2):
        as_dave.post(f"/models/{name}/versions/", {"file": zipped(iris_model_dir)})
    as_dave.post(f"/models/{name}/promote/", {"version": 2, "alias": "champion", "confirmed": "yes"})

    review = as_dave.get(f"/models/{name}/versions/2/archive/")
    assert review.status_code == 200
    assert "v2: ready → archived" in _page(review)
    refused = as_dave.post(f"/models/{name}/versions/2/archive/", {"confirmed": "yes"})

    assert refused.status_code == 409
    assert "An alias points to this version; move it first." in _page(refused)
    assert ModelVersion.objects.get(model__name=name, version=2).status == "ready"

    archived = as_dave.post(f"/models/{name}/versions/1/archive/", {"confirmed": "yes", "reason": "old"}, follow=True)
    assert archived.status_code == 200
    assert f"{name} v1 is archived." in _page(archived)
    assert ModelVersion.objects.get(model__name=name, version=1).status == "archived"


def test_unknown_version_or_model_is_404(as_dave, name):
    make_model(name, versions=(1,))
    assert as_dave.get(f"/models/{name}/versions/9/archive/").status_code == 404
    assert as_dave.get("/models/no-such-model/").status_code == 404


def test_other_tenant_gets_404_for_a_model_of_tenant_a(client_b, cast, name):
    with tenant_context(cast.tenant_a):
        make_model(name, versions=(1,), aliases={"champion": 1})
    with tenant_context(cast.tenant_b):
        client_b.force_login(cast.charlie)

    assert client_b.get(f"/models/{name}/").status_code == 404
    assert client_b.get(f"/models/{name}/promote/", {"version": 1}).status_code == 404
    assert client_b.post(f"/models/{name}/versions/1/archive/", {"confirmed": "yes"}).status_code == 404
    assert name not in _page(client_b.get("/models/"))
    with tenant_context(cast.tenant_a):
        assert ModelVersion.objects.get(model__name=name).status == "ready"


# --- who may do what --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", ["victor", "olivia"])
def test_viewers_and_officers_read_every_page_without_forms(client_a, cast, in_tenant_a, name, user):
    model = make_model(name, versions=(1, 2), aliases={"champion": 1})
    server = _server(cast)
    deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    client_a.force_login(getattr(cast, user))

    nav = _page(client_a.get("/"))
    for link in ('href="/models/"', 'href="/servers/"', 'href="/deployments/"'):
        assert link in nav
    for path in ("/models/", f"/models/{name}/", "/servers/", "/deployments/"):
        response = client_a.get(path)
        assert response.status_code == 200, path
        page = _page(response)
        assert "<form" not in page.split("</header>", 1)[1], path
    assert name in _page(client_a.get("/deployments/"))


def test_viewer_posts_are_refused_and_change_nothing(as_victor, cast, name):
    model = make_model(name, versions=(1, 2), aliases={"champion": 1})
    AliasChange.objects.create(model=model, alias="champion", kind="promote", from_version=2, to_version=1)
    server = _server(cast)
    deployment = deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
    before = (
        RegisteredModel.objects.count(),
        ModelVersion.objects.filter(status="ready").count(),
        AliasChange.objects.count(),
        ModelServer.objects.count(),
        Deployment.objects.filter(is_active=True).count(),
    )
    attempts = [
        ("/models/", {"name": f"{name}-x"}),
        (f"/models/{name}/versions/", {"file": io.BytesIO(b"x")}),
        (f"/models/{name}/promote/", {"version": 2, "alias": "champion", "confirmed": "yes"}),
        (f"/models/{name}/rollback/", {"alias": "champion", "reason": "x", "confirmed": "yes"}),
        (f"/models/{name}/versions/2/archive/", {"confirmed": "yes"}),
        ("/servers/", {"name": "gpu-b", "protocol": "mlflow", "gpu_pool": "a100", "replica_urls": "http://10.0.0.2"}),
        (f"/servers/{server.pk}/probe/", {}),
        ("/deployments/", {"model": model.pk, "version": 2, "server": server.pk}),
        (f"/deployments/{deployment.pk}/deactivate/", {"confirmed": "yes"}),
    ]
    for path, data in attempts:
        assert as_victor.post(path, data).status_code == 403, path
    for path in (
        f"/models/{name}/promote/",
        f"/models/{name}/versions/2/archive/",
        f"/deployments/{deployment.pk}/deactivate/",
    ):
        assert as_victor.get(path).status_code == 403, path

    after = (
        RegisteredModel.objects.count(),
        ModelVersion.objects.filter(status="ready").count(),
        AliasChange.objects.count(),
        ModelServer.objects.count(),
        Deployment.objects.filter(is_active=True).count(),
    )
    assert after == before
    assert ModelAlias.objects.get(model=model, alias="champion").version.version == 1
    assert ServerReplica.objects.get(server=server).last_checked_at is None


# --- servers ---------------------------------------------------------------------------------------------------


def test_servers_page_shows_health_and_never_the_auth_header_value(as_dave, cast):
    server = _server(
        cast,
        replica_urls=["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"],
        accelerator="H100 80GB",
        request_timeout_seconds=45,
        auth_header_name="Authorization",
        auth_header_value=HEADER_VALUE,
    )
    since = timezone.now() - timedelta(hours=2)
    checked = timezone.now() - timedelta(minutes=1)
    ServerReplica.objects.filter(server=server, base_url="http://10.0.0.1:8080").update(
        is_up=True, status_changed_at=since, last_checked_at=checked
    )
    ServerReplica.objects.filter(server=server, base_url="http://10.0.0.2:8080").update(
        is_up=False, status_changed_at=since, last_checked_at=checked, last_error="HTTP 503 from /ping"
    )

    response = as_dave.get("/servers/")

    assert response.status_code == 200
    page = _page(response)
    row = page[page.index('data-server="gpu-a"') :].split("</tr>")[0]
    assert "pool.a100" in row
    assert "H100 80GB" in row
    assert "45 s" in row
    assert '<span class="health health-up">up</span>' in row
    assert '<span class="health health-down">down</span>' in row
    assert '<span class="health health-unknown">never probed</span>' in row
    assert "HTTP 503 from /ping" in row
    assert f"since {timezone.localtime(since):%Y-%m-%d %H:%M}" in row
    assert "<code>Authorization</code>" in row
    assert HEADER_VALUE not in page
    assert "portal-test-secret" not in page
    assert server.auth_header_value_encrypted not in page


def test_developer_registers_a_server_and_the_header_value_never_comes_back(as_dave, cast):
    fields = {
        "name": "gpu-b",
        "protocol": "openai",
        "gpu_pool": "Not a pool!",
        "replica_urls": "http://10.0.0.7:8000\nhttp://10.0.0.8:8000\n",
        "accelerator": "L4",
        "request_timeout_seconds": "60",
        "auth_header_name": "X-Api-Key",
        "auth_header_value": HEADER_VALUE,
    }
    refused = as_dave.post("/servers/", fields)
    assert refused.status_code == 400
    assert "The GPU pool is a slug" in _page(refused)
    assert HEADER_VALUE not in _page(refused)
    assert not ModelServer.objects.filter(name="gpu-b").exists()

    created = as_dave.post("/servers/", {**fields, "gpu_pool": "l4"}, follow=True)

    assert created.status_code == 200
    page = _page(created)
    assert "Server gpu-b is registered." in page
    assert HEADER_VALUE not in page
    server = ModelServer.objects.get(name="gpu-b")
    assert (server.protocol, server.gpu_pool, server.request_timeout_seconds) == ("openai", "l4", 60)
    assert server.has_auth_header
    assert sorted(server.replicas.values_list("base_url", flat=True)) == [
        "http://10.0.0.7:8000",
        "http://10.0.0.8:8000",
    ]
    assert server.created_by == cast.dave


def test_probe_now_records_health(as_dave, cast):
    server = _server(cast, replica_urls=[f"http://127.0.0.1:{free_port()}"])

    response = as_dave.post(f"/servers/{server.pk}/probe/", follow=True)

    assert response.status_code == 200
    assert "Probed gpu-a: 0 of 1 replicas up." in _page(response)
    replica = ServerReplica.objects.get(server=server)
    assert replica.is_up is False
    assert replica.last_checked_at is not None
    assert '<span class="health health-down">down</span>' in _page(response)


# --- deployments -----------------------------------------------------------------------------------------------


def test_developer_deploys_and_deactivates(as_dave, cast, name):
    model = make_model(name, versions=(1, 2, 3), aliases={"champion": 2})
    server = _server(cast)

    created = as_dave.post(
        "/deployments/",
        {
            "model": model.pk,
            "alias": "champion",
            "server": server.pk,
            "canary_version": 3,
            "canary_percent": 10,
            "price_per_request": "0.0015",
            "price_per_1k_tokens": "0.02",
            "price_per_gpu_second": "",
        },
        follow=True,
    )

    assert created.status_code == 200
    page = _page(created)
    assert f"Deployed {name}@champion on gpu-a." in page
    deployment = Deployment.objects.get(model=model)
    assert (deployment.alias, deployment.canary_version.version, deployment.canary_percent) == ("champion", 3, 10)
    assert str(deployment.price_per_request) == "0.001500"
    assert deployment.created_by == cast.dave
    row = page[page.index(f'data-deployment="{deployment.pk}"') :].split("</tr>")[0]
    assert "@champion" in row
    assert "v3 · 10%" in row
    assert "<td>0.0015</td>" in row
    assert "<td>0.02</td>" in row
    assert "<td>0</td>" in row

    review = as_dave.get(f"/deployments/{deployment.pk}/deactivate/")
    assert review.status_code == 200
    assert f"{name}@champion: active → deactivated" in _page(review)
    deployment.refresh_from_db()
    assert deployment.is_active

    done = as_dave.post(f"/deployments/{deployment.pk}/deactivate/", {"confirmed": "yes"}, follow=True)

    assert done.status_code == 200
    assert "is deactivated" in _page(done)
    deployment.refresh_from_db()
    assert not deployment.is_active


def test_deployment_refusals_rerender_the_form(as_dave, cast, name):
    model = make_model(name, versions=(1, 2))
    ModelVersion.objects.filter(model=model, version=1).update(status="archived")
    server = _server(cast)
    base = {"model": model.pk, "server": server.pk}

    cases = [
        ({"alias": "champion", "version": 2}, "Deploy either an alias or a version, not both."),
        ({}, "Deploy either an alias or a version, not both."),
        ({"version": 7}, f"{name} has no version 7."),
        ({"version": 1}, "(v1) is archived."),
        ({"version": 2, "canary_version": 1, "canary_percent": 5}, "is archived."),
        ({"version": 2, "price_per_request": "-1"}, "greater than or equal to 0"),
    ]
    for data, message in cases:
        response = as_dave.post("/deployments/", {**base, **data})
        assert response.status_code == 400, data
        assert message in _page(response), data
    assert not Deployment.objects.filter(model=model).exists()

    assert as_dave.post("/deployments/", {**base, "version": 2}).status_code == 302
    again = as_dave.post("/deployments/", {**base, "version": 2})
    assert again.status_code == 400
    assert "is deployed already" in _page(again)
    assert Deployment.objects.filter(model=model).count() == 1


# --- query budgets ---------------------------------------------------------------------------------------------

# Per page, counting django-tenants' `SET search_path` before each query: session, user, two permission reads,
# then the page's own reads (prefetches and the create form's selects), whatever the number of rows.
BUDGETS = {"/models/": 12, "/servers/": 12, "/deployments/": 14, "/models/budget-0/": 18}


def _queries(client, path: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        assert client.get(path).status_code == 200
    return len(queries)


def test_list_pages_run_a_bounded_number_of_queries(as_dave, cast, django_assert_max_num_queries):
    def add(index: int):
        model = make_model(f"budget-{index}", versions=(1, 2), aliases={"champion": 1, "challenger": 2})
        server = _server(cast, name=f"gpu-{index}", replica_urls=["http://10.0.0.1:80", "http://10.0.0.2:80"])
        deployment_create(actor=cast.alice, model=model, server=server, alias="champion")
        deployment_create(
            actor=cast.alice,
            model=model,
            server=server,
            version=ModelVersion.objects.get(model=model, version=2),
            canary_version=ModelVersion.objects.get(model=model, version=1),
            canary_percent=5,
        )
        AliasChange.objects.create(model=model, alias="champion", kind="set", to_version=1, actor=cast.dave)

    for index in range(2):
        add(index)
    as_dave.get("/")  # the host's tenant is looked up once, then cached
    counts = {}
    for path, budget in BUDGETS.items():
        with django_assert_max_num_queries(budget):
            counts[path] = _queries(as_dave, path)

    for index in range(2, 6):
        add(index)
    budget_0 = RegisteredModel.objects.get(name="budget-0")
    for index in range(3, 7):
        ModelVersion.objects.create(model=budget_0, version=index, source="x", created_by=cast.dave)
        AliasChange.objects.create(model=budget_0, alias="x", kind="set", to_version=index, actor=cast.alice)
    for path, budget in BUDGETS.items():
        with django_assert_max_num_queries(budget):
            assert _queries(as_dave, path) == counts[path], path
