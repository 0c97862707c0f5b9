"""The demo model of `make run`: a small scikit-learn classifier trained on a dataset that ships with
scikit-learn (no download), logged with a signature and explicit requirements, registered twice."""

from pathlib import Path
from tempfile import TemporaryDirectory

from apps.accounts.models import User
from apps.registry import services
from apps.registry.mlflow_store import registry_client, tenant_experiment_id
from apps.registry.models import ModelVersion, RegisteredModel

DEMO_MODEL = "iris-classifier"
DEMO_CHAT_MODEL = "demo-chat"
DEMO_EMBED_MODEL = "all-minilm-l6-v2"

# The registry entry of a model an OpenAI-compatible server serves: MLflow holds its identity and lineage
# (name, versions, aliases, tags naming the served model), the weights live with the server.
_SERVED_ELSEWHERE = """
import mlflow.pyfunc
from mlflow.models import set_model


class ServedElsewhere(mlflow.pyfunc.PythonModel):
    \"\"\"Stands for a model an OpenAI-compatible server serves; the portal calls that server, never this.\"\"\"

    def predict(self, context, model_input, params=None):
        raise RuntimeError("served by an OpenAI-compatible server: call the portal's /v1/ API")


set_model(ServedElsewhere())
"""


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


def _register_served_elsewhere(*, owner: User, model: RegisteredModel, served_as: str) -> ModelVersion:
    import mlflow.pyfunc

    client = registry_client()
    run = client.create_run(tenant_experiment_id(), tags={"portal.demo": "true", "served_model_name": served_as})
    with TemporaryDirectory() as scratch:
        code = Path(scratch) / "served_elsewhere.py"
        code.write_text(_SERVED_ELSEWHERE)
        path = Path(scratch) / "model"
        mlflow.pyfunc.save_model(str(path), python_model=str(code), pip_requirements=["mlflow"])
        client.log_artifacts(run.info.run_id, str(path), artifact_path="model")
    client.set_terminated(run.info.run_id)
    return services.version_register_from_run(actor=owner, model=model, run_id=run.info.run_id)


def demo_openai_models_ensure(*, owner: User, url: str) -> None:
    """The demo's OpenAI-compatible server (loopback) and its two models, each deployed as `champion` with prices."""
    from apps.serving import services as serving
    from apps.serving.models import Deployment, ModelServer

    server = ModelServer.objects.filter(name="demo-openai").first()
    if server is None:
        server = serving.server_create(
            actor=owner, name="demo-openai", protocol="openai", gpu_pool="cpu", replica_urls=[url], accelerator="cpu"
        )
    elif sorted(server.replicas.values_list("base_url", flat=True)) != [url]:
        serving.server_update(actor=owner, server=server, replica_urls=[url])
    for name, description in (
        (DEMO_CHAT_MODEL, "A test chat model that echoes the last message (no LLM weights ship on PyPI)"),
        (DEMO_EMBED_MODEL, "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions"),
    ):
        model = RegisteredModel.objects.filter(name=name).first()
        if model is None:
            model = services.model_create(actor=owner, name=name, description=description)
        if not model.aliases.filter(alias="champion").exists():
            version = model.versions.order_by("-version").first() or _register_served_elsewhere(
                owner=owner, model=model, served_as=name
            )
            services.model_promote(actor=owner, model=model, version=version, reason="demo")
        if not Deployment.objects.filter(model=model, alias="champion", is_active=True).exists():
            serving.deployment_create(
                actor=owner,
                model=model,
                server=server,
                alias="champion",
                price_per_request="0.0001",
                price_per_1k_tokens="0.002",
            )


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
