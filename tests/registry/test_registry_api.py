"""The registry API on a real MLflow store: models, uploads, runs, aliases, promotion, rollback, archiving."""

import io
import tarfile
import uuid
import zipfile
from pathlib import Path

import pytest
from auditlog.models import LogEntry
from django.test import Client, override_settings
from django_tenants.utils import tenant_context

from apps.apikeys.services import apikey_create
from apps.registry.mlflow_store import registry_client, tenant_experiment_id
from apps.registry.models import AliasChange, ModelVersion, RegisteredModel
from tests.helpers import host_of


@pytest.fixture
def as_dave(client_a, cast, in_tenant_a, mlflow_store):
    client_a.force_login(cast.dave)
    return client_a


@pytest.fixture
def name():
    return f"iris-{uuid.uuid4().hex[:8]}"


def zipped(directory: Path, *, prefix: str = "model/", extra: dict | None = None, skip_mlmodel=False) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for path in directory.rglob("*"):
            if path.is_file() and not (skip_mlmodel and path.name == "MLmodel"):
                bundle.write(path, prefix + str(path.relative_to(directory)))
        for member, content in (extra or {}).items():
            bundle.writestr(member, content)
    buffer.seek(0)
    buffer.name = "model.zip"
    return buffer


def upload(client, model: str, package) -> object:
    return client.post(f"/api/v1/models/{model}/versions", {"file": package})


def create(client, model: str):
    return client.post("/api/v1/models", {"name": model}, content_type="application/json")


def test_create_model_namespaces_it_in_mlflow(as_dave, name):
    response = create(as_dave, name)
    assert response.status_code == 201
    assert response.json()["name"] == name
    assert registry_client().get_registered_model(f"alpha__{name}").tags["portal.tenant"] == "alpha"
    assert RegisteredModel.objects.get(name=name).mlflow_name == f"alpha__{name}"


def test_name_clash_is_409_and_bad_names_are_422(as_dave, name):
    create(as_dave, name)
    clash = create(as_dave, name)
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "name_taken"
    for bad in ("Upper", "alpha__sneaky", "-x", "a"):
        response = create(as_dave, bad)
        assert response.status_code == 422, bad
        assert response.json()["error"]["code"] == "invalid_model_name"


def test_upload_registers_versions_with_signature_and_flavour(as_dave, name, iris_model_dir):
    create(as_dave, name)
    first = upload(as_dave, name, zipped(iris_model_dir))
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["version"] == 1
    assert "python_function" in body["flavors"]
    assert "sklearn" in body["flavors"]
    assert [column["name"] for column in body["signature"]["inputs"]][:2] == ["sepal_length", "sepal_width"]
    assert body["created_by"] == "dave@alpha.example"
    assert upload(as_dave, name, zipped(iris_model_dir, prefix="")).json()["version"] == 2
    versions = as_dave.get(f"/api/v1/models/{name}/versions").json()
    assert [row["version"] for row in versions["results"]] == [2, 1]
    schema = as_dave.get(f"/api/v1/models/{name}/versions/1/schema").json()
    assert schema["inputs"][0] == {"type": "double", "name": "sepal_length", "required": True}
    assert registry_client().get_model_version(f"alpha__{name}", "2").run_id == versions["results"][0]["run_id"]


def test_a_tarball_is_accepted_too(as_dave, name, iris_model_dir, tmp_path):
    create(as_dave, name)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as bundle:
        bundle.add(iris_model_dir, arcname="model")
    with archive.open("rb") as package:
        assert upload(as_dave, name, package).status_code == 201


@pytest.mark.parametrize(
    "broken",
    [
        lambda directory: io.BytesIO(b"this is not an archive"),
        lambda directory: zipped(directory, skip_mlmodel=True),
        lambda directory: zipped(directory, extra={"../../evil.txt": "x"}),
        lambda directory: zipped(directory, skip_mlmodel=True, extra={"model/MLmodel": "flavors:\n  keras: {}\n"}),
        lambda directory: zipped(directory, skip_mlmodel=True, extra={"model/MLmodel": ": not yaml ["}),
    ],
    ids=["not-an-archive", "no-mlmodel", "path-traversal", "unservable-flavour", "broken-mlmodel"],
)
def test_broken_uploads_are_422_and_register_nothing(as_dave, name, iris_model_dir, broken):
    create(as_dave, name)
    package = broken(iris_model_dir)
    package.name = "model.zip"
    response = upload(as_dave, name, package)
    assert response.status_code == 422, response.content
    assert response.json()["error"]["code"] == "invalid_model_package"
    assert not ModelVersion.objects.filter(model__name=name).exists()
    assert registry_client().search_model_versions(f"name='alpha__{name}'") == []


def test_oversized_upload_is_413(as_dave, name, iris_model_dir):
    create(as_dave, name)
    with override_settings(MODEL_UPLOAD_MAX_BYTES=1000):
        response = upload(as_dave, name, zipped(iris_model_dir))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_register_from_a_run_of_the_tenant(as_dave, name, iris_model_dir):
    create(as_dave, name)
    client = registry_client()
    run = client.create_run(tenant_experiment_id())
    client.log_artifacts(run.info.run_id, str(iris_model_dir), artifact_path="model")
    response = as_dave.post(
        f"/api/v1/models/{name}/versions", {"run_id": run.info.run_id}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["run_id"] == run.info.run_id
    missing = as_dave.post(f"/api/v1/models/{name}/versions", {"run_id": "0" * 32}, content_type="application/json")
    assert missing.status_code == 404


def test_promote_rollback_and_history(as_dave, name, iris_model_dir, cast):
    create(as_dave, name)
    for _ in range(2):
        upload(as_dave, name, zipped(iris_model_dir))
    promote = as_dave.post(f"/api/v1/models/{name}/promote", {"version": 1}, content_type="application/json")
    assert promote.json()["aliases"] == {"champion": 1}
    as_dave.post(f"/api/v1/models/{name}/promote", {"version": 2, "reason": "better"}, content_type="application/json")
    as_dave.put(f"/api/v1/models/{name}/aliases/challenger", {"version": 1}, content_type="application/json")
    assert as_dave.get(f"/api/v1/models/{name}").json()["aliases"] == {"champion": 2, "challenger": 1}
    no_reason = as_dave.post(f"/api/v1/models/{name}/rollback", {}, content_type="application/json")
    assert no_reason.status_code == 422
    rolled = as_dave.post(f"/api/v1/models/{name}/rollback", {"reason": "v2 drifts"}, content_type="application/json")
    assert rolled.status_code == 200
    assert rolled.json()["aliases"]["champion"] == 1
    assert int(registry_client().get_model_version_by_alias(f"alpha__{name}", "champion").version) == 1
    history = as_dave.get(f"/api/v1/models/{name}/history").json()["results"]
    assert [(row["kind"], row["from_version"], row["to_version"]) for row in history] == [
        ("rollback", 2, 1),
        ("set", None, 1),
        ("promote", 1, 2),
        ("promote", None, 1),
    ]
    assert history[0]["reason"] == "v2 drifts"
    assert history[0]["actor"] == cast.dave.email
    change = AliasChange.objects.get(model__name=name, kind="rollback")
    assert LogEntry.objects.get_for_object(change).get().actor_id == cast.dave.pk


def test_rollbacks_walk_back_through_the_history(as_dave, name, iris_model_dir):
    create(as_dave, name)
    for version in (1, 2, 3):
        upload(as_dave, name, zipped(iris_model_dir))
        as_dave.post(f"/api/v1/models/{name}/promote", {"version": version}, content_type="application/json")
    as_dave.post(f"/api/v1/models/{name}/promote", {"version": 3}, content_type="application/json")  # no move
    steps = [
        as_dave.post(f"/api/v1/models/{name}/rollback", {"reason": "r"}, content_type="application/json")
        for _ in range(3)
    ]
    assert [step.status_code for step in steps] == [200, 200, 409]
    assert [step.json()["aliases"]["champion"] for step in steps[:2]] == [2, 1]
    history = as_dave.get(f"/api/v1/models/{name}/history").json()["results"]
    assert len(history) == 5  # three promotions, two rollbacks; the no-op promotion left nothing


def test_a_clash_with_a_leftover_mlflow_name_is_409_not_500(as_dave, name):
    registry_client().create_registered_model(f"alpha__{name}")
    response = create(as_dave, name)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "name_taken"
    assert not RegisteredModel.objects.filter(name=name).exists()


def test_rollback_with_no_earlier_version_is_409(as_dave, name, iris_model_dir):
    create(as_dave, name)
    upload(as_dave, name, zipped(iris_model_dir))
    as_dave.post(f"/api/v1/models/{name}/promote", {"version": 1}, content_type="application/json")
    response = as_dave.post(f"/api/v1/models/{name}/rollback", {"reason": "x"}, content_type="application/json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "nothing_to_roll_back"


def test_archive_rules(as_dave, name, iris_model_dir):
    create(as_dave, name)
    for _ in range(2):
        upload(as_dave, name, zipped(iris_model_dir))
    as_dave.post(f"/api/v1/models/{name}/promote", {"version": 2}, content_type="application/json")
    in_use = as_dave.post(f"/api/v1/models/{name}/versions/2/archive", {}, content_type="application/json")
    assert in_use.status_code == 409
    archived = as_dave.post(
        f"/api/v1/models/{name}/versions/1/archive", {"reason": "old"}, content_type="application/json"
    )
    assert archived.json()["status"] == "archived"
    refused = as_dave.post(f"/api/v1/models/{name}/promote", {"version": 1}, content_type="application/json")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "version_archived"


def test_unknown_model_or_version_is_404(as_dave, name):
    assert as_dave.get("/api/v1/models/nope-nope").status_code == 404
    create(as_dave, name)
    assert as_dave.get(f"/api/v1/models/{name}/versions/9").status_code == 404
    promote = as_dave.post(f"/api/v1/models/{name}/promote", {"version": 9}, content_type="application/json")
    assert promote.status_code == 404


def test_viewer_reads_but_cannot_write(client_a, cast, in_tenant_a, mlflow_store, name):
    client_a.force_login(cast.victor)
    assert client_a.get("/api/v1/models").status_code == 200
    assert create(client_a, name).status_code == 403
    assert not RegisteredModel.objects.filter(name=name).exists()


def test_scopes_separate_reading_from_writing(client_a, cast, in_tenant_a, mlflow_store, name):
    _, reader = apikey_create(actor=cast.dave, name="reader", scopes=["models:read"])
    _, writer = apikey_create(actor=cast.dave, name="writer", scopes=["models:read", "models:write"])
    assert client_a.get("/api/v1/models", HTTP_X_API_KEY=reader).status_code == 200
    denied = client_a.post("/api/v1/models", {"name": name}, content_type="application/json", HTTP_X_API_KEY=reader)
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "missing_scope"
    made = client_a.post("/api/v1/models", {"name": name}, content_type="application/json", HTTP_X_API_KEY=writer)
    assert made.status_code == 201


def test_tenant_b_can_neither_see_nor_touch_a_models(as_dave, name, iris_model_dir, cast):
    create(as_dave, name)
    upload(as_dave, name, zipped(iris_model_dir))
    run_id = as_dave.get(f"/api/v1/models/{name}/versions").json()["results"][0]["run_id"]
    bravo = Client(HTTP_HOST=host_of(cast.tenant_b))
    with tenant_context(cast.tenant_b):
        bravo.force_login(cast.charlie)
    assert bravo.get("/api/v1/models").json()["count"] == 0
    for path in (
        f"/api/v1/models/{name}",
        f"/api/v1/models/{name}/versions",
        f"/api/v1/models/{name}/versions/1/schema",
    ):
        assert bravo.get(path).status_code == 404
    for path, body in (
        (f"/api/v1/models/{name}/promote", {"version": 1}),
        (f"/api/v1/models/{name}/rollback", {"reason": "x"}),
        (f"/api/v1/models/{name}/versions", {"run_id": run_id}),
    ):
        assert bravo.post(path, body, content_type="application/json").status_code == 404
    assert create(bravo, f"alpha__{name}").status_code == 422  # MLflow names are not names here
    own = create(bravo, name)  # the same name is free in B's namespace
    assert own.status_code == 201
    stolen_run = bravo.post(f"/api/v1/models/{name}/versions", {"run_id": run_id}, content_type="application/json")
    assert stolen_run.status_code == 404
    assert registry_client().get_registered_model(f"bravo__{name}").tags["portal.tenant"] == "bravo"
    assert as_dave.get(f"/api/v1/models/{name}").json()["aliases"] == {}
