"""The registry, a real model server and routing together: rollback reroutes the very next request."""

import json
import uuid
from pathlib import Path

import pytest
import requests

from apps.registry import services as registry
from apps.serving import services as serving
from apps.serving.health import servers_probe
from apps.serving.selectors import route_resolve
from tests.registry.test_registry_api import zipped

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def deployed(cast, in_tenant_a, mlflow_store, iris_model_dir, served_model, tmp_path):
    """Model with v1 and v2, champion on v2, deployed on a server whose replica is the real mlflow process."""
    model = registry.model_create(actor=cast.dave, name=f"iris-{uuid.uuid4().hex[:8]}")
    versions = []
    for index in range(2):
        archive = tmp_path / f"v{index}.zip"
        archive.write_bytes(zipped(iris_model_dir).getvalue())
        versions.append(registry.version_register_from_upload(actor=cast.dave, model=model, archive=archive))
    registry.model_promote(actor=cast.dave, model=model, version=versions[0])
    registry.model_promote(actor=cast.dave, model=model, version=versions[1])
    server = serving.server_create(
        actor=cast.dave,
        name=f"cpu-{uuid.uuid4().hex[:6]}",
        protocol="mlflow",
        gpu_pool="cpu",
        replica_urls=[served_model],
    )
    serving.deployment_create(actor=cast.dave, model=model, server=server, alias="champion")
    return model, server


def test_rollback_is_one_request_and_reroutes_the_very_next_decision(deployed, client_a, cast):
    model, _ = deployed
    assert route_resolve(model_name=model.name).version == 2  # the route is cached now
    client_a.force_login(cast.dave)
    response = client_a.post(
        f"/api/v1/models/{model.name}/rollback", {"reason": "v2 misbehaves"}, content_type="application/json"
    )
    assert response.status_code == 200
    assert route_resolve(model_name=model.name).version == 1


def test_promotion_reroutes_at_once_too(deployed, cast):
    model, _ = deployed
    assert route_resolve(model_name=model.name).version == 2
    registry.model_promote(actor=cast.dave, model=model, version=model.versions.get(version=1))
    assert route_resolve(model_name=model.name).version == 1


def test_the_real_model_server_is_probed_up_and_answers_through_its_route(deployed):
    model, server = deployed
    replicas = servers_probe(server=server)
    assert [replica.is_up for replica in replicas] == [True]
    route = route_resolve(model_name=model.name)
    assert route.protocol == "mlflow"
    assert route.queue_name == "pool.cpu"
    body = json.loads((ROOT / "example.json").read_text())
    answer = requests.post(f"{route.replica_urls[0]}/invocations", json=body, timeout=30)
    assert answer.status_code == 200
    assert len(answer.json()["predictions"]) == 2


def test_the_input_schema_of_the_routed_version_matches_example_json(deployed):
    model, _ = deployed
    route = route_resolve(model_name=model.name)
    columns = [column["name"] for column in route.signature["inputs"]]
    assert columns == json.loads((ROOT / "example.json").read_text())["dataframe_split"]["columns"]


def test_a_version_served_by_a_deployment_cannot_be_archived(deployed, cast):
    from apps.api.errors import ApiError
    from apps.serving.models import Deployment

    model, server = deployed
    serving.deployment_create(actor=cast.dave, model=model, server=server, version=model.versions.get(version=1))
    registry.model_promote(actor=cast.dave, model=model, version=model.versions.get(version=2))
    with pytest.raises(ApiError) as refused:
        registry.version_archive(actor=cast.dave, version=model.versions.get(version=1))
    assert refused.value.error_code == "version_in_use"
    assert Deployment.objects.filter(version__version=1, is_active=True).exists()
