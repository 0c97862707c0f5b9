"""The demo model of `make run`: a small scikit-learn classifier trained on a dataset that ships with
scikit-learn (no download), logged with a signature and explicit requirements, registered twice."""

from pathlib import Path
from tempfile import TemporaryDirectory

from apps.accounts.models import User
from apps.registry import services
from apps.registry.mlflow_store import registry_client, tenant_experiment_id
from apps.registry.models import ModelVersion, RegisteredModel

DEMO_MODEL = "iris-classifier"


def demo_model_ensure(*, owner: User) -> ModelVersion:
    """Versions 1 and 2 of the demo model with `champion` on 2; reused when they exist. Returns the champion."""
    model = RegisteredModel.objects.filter(name=DEMO_MODEL).first()
    if model is None:
        model = services.model_create(
            actor=owner, name=DEMO_MODEL, description="Iris species from petal and sepal sizes"
        )
    while model.versions.count() < 2:
        _train_and_register(owner=owner, model=model, max_iter=50 + 150 * model.versions.count())
    champion = model.aliases.filter(alias="champion").select_related("version").first()
    if champion is None:
        # v1 first, then v2: the demo has a history, so a rollback has somewhere to go.
        first, latest = model.versions.order_by("version")[:2]
        services.model_promote(actor=owner, model=model, version=first, reason="first release")
        services.model_promote(actor=owner, model=model, version=latest, reason="more training iterations")
        return latest
    return champion.version


def _train_and_register(*, owner: User, model: RegisteredModel, max_iter: int) -> ModelVersion:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    frame = load_iris(as_frame=True)
    features = frame.data.rename(columns=lambda column: column.replace(" (cm)", "").replace(" ", "_"))
    classifier = LogisticRegression(max_iter=max_iter).fit(features, frame.target)
    client = registry_client()
    run = client.create_run(tenant_experiment_id(), tags={"portal.demo": "true"})
    client.log_param(run.info.run_id, "max_iter", max_iter)
    with TemporaryDirectory() as scratch:
        path = Path(scratch) / "model"
        mlflow.sklearn.save_model(
            classifier,
            str(path),
            signature=infer_signature(features, classifier.predict(features)),
            input_example=features.head(2),
            pip_requirements=["scikit-learn", "pandas"],
        )
        client.log_artifacts(run.info.run_id, str(path), artifact_path="model")
    client.set_terminated(run.info.run_id)
    return services.version_register_from_run(actor=owner, model=model, run_id=run.info.run_id)


def local_model_path(version: ModelVersion) -> Path:
    """Where the version's artifacts are on this machine (file store), for `mlflow models serve`."""
    source = version.source
    return Path(source.removeprefix("file://"))


def demo_deployment_ensure(*, owner: User, version: ModelVersion, url: str) -> None:
    """The demo model server (`mlflow models serve` on loopback) and the deployment of `champion` on it."""
    from apps.serving import services as serving
    from apps.serving.models import Deployment, ModelServer

    server = ModelServer.objects.filter(name="demo-cpu").first()
    if server is None:
        server = serving.server_create(
            actor=owner, name="demo-cpu", protocol="mlflow", gpu_pool="cpu", replica_urls=[url], accelerator="cpu"
        )
    elif sorted(server.replicas.values_list("base_url", flat=True)) != [url]:
        serving.server_update(actor=owner, server=server, replica_urls=[url])
    if not Deployment.objects.filter(model=version.model, alias="champion", is_active=True).exists():
        serving.deployment_create(actor=owner, model=version.model, server=server, alias="champion")
