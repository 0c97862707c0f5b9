"""The live predict stack, shared by the modules that need it (each gets its own, in a tenant of its own).

gunicorn, a real Celery worker process on a pool queue of its own, and two real `mlflow models serve` processes:
an iris classifier and a "sleepy" model whose latency a test sets through `params.delay`. Everything is committed
(the web and worker processes cannot see a test's transaction).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from django.db import connection
from django_tenants.utils import tenant_context

from apps.accounts.models import User
from apps.apikeys.services import apikey_create
from apps.compliance.models import InferenceRecord
from apps.registry import services as registry
from apps.serving import services as serving
from apps.tenants.services import tenant_signup
from tests.helpers import PASSWORD, database_url_for_tests, start_model_server, start_portal_server
from tests.registry.test_registry_api import zipped

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = json.loads((ROOT / "example.json").read_text())

SLEEPY_CODE = '''
import time

import mlflow.pyfunc
from mlflow.models import set_model

CALLS = {calls!r}


class Sleepy(mlflow.pyfunc.PythonModel):
    """Answers the row count after sleeping `delay` seconds: a model whose latency a test controls.

    A call with a `tag` appends it to the CALLS file: how a test counts what really reached the model.
    """

    def predict(self, context, model_input, params=None):
        params = params or {{}}
        if params.get("tag"):
            with open(CALLS, "a") as calls:
                calls.write(params["tag"] + "\\n")
        time.sleep(float(params.get("delay", 0.0)))
        return [float(len(model_input))] * len(model_input)


set_model(Sleepy())
'''


@pytest.fixture(scope="module")
def sleepy_calls(tmp_path_factory) -> Path:
    """The file the sleepy model appends each tagged call's tag to."""
    return tmp_path_factory.mktemp("sleepy-calls") / "calls.txt"


@pytest.fixture(scope="module")
def sleepy_model_dir(tmp_path_factory, sleepy_calls):
    import mlflow.pyfunc
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    scratch = tmp_path_factory.mktemp("sleepy")
    code = scratch / "sleepy_model.py"
    code.write_text(SLEEPY_CODE.format(calls=str(sleepy_calls)))
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", "x")]),
        outputs=Schema([ColSpec("double")]),
        params=ParamSchema([ParamSpec("delay", "double", 0.0), ParamSpec("tag", "string", "")]),
    )
    path = scratch / "model"
    mlflow.pyfunc.save_model(str(path), python_model=str(code), signature=signature, pip_requirements=["pandas"])
    return path


class Stack:
    """The live pieces and the names the tests need."""

    def __init__(self, **values):
        self.__dict__.update(values)

    def post(self, path: str, *, secret: str | None = None, body=None, raw: bytes | None = None, headers=None):
        port = self.base.rsplit(":", 1)[1]
        sent = {"Host": f"{self.host}:{port}", **(headers or {})}
        if secret:
            sent["Authorization"] = f"Bearer {secret}"
        if raw is None:
            raw = json.dumps(body if body is not None else EXAMPLE).encode()
            sent.setdefault("Content-Type", "application/json")
        return requests.post(f"http://127.0.0.1:{port}{path}", data=raw, headers=sent, timeout=60)

    def get(self, path: str, *, secret: str | None = None, host: str | None = None):
        port = self.base.rsplit(":", 1)[1]
        headers = {"Host": f"{host or self.host}:{port}", "Authorization": f"Bearer {secret or self.secret}"}
        return requests.get(f"http://127.0.0.1:{port}{path}", headers=headers, timeout=60)

    def predict(self, model: str, *, query: str = "", **kwargs):
        return self.post(f"/api/v1/models/{model}/predict{query}", secret=kwargs.pop("secret", self.secret), **kwargs)

    def calls_tagged(self, tag: str) -> int:
        """How many calls carrying `tag` reached the sleepy model server."""
        if not self.sleepy_calls.exists():
            return 0
        return self.sleepy_calls.read_text().splitlines().count(tag)

    def wait_for_worker(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.predict("iris").status_code == 200:
                return
            time.sleep(0.5)
        raise RuntimeError("the worker never answered")

    def deploy_iris_copy(self, *, replica_urls: list[str], gpu_pool: str | None = None, timeout: int = 30) -> str:
        """A new model (the iris archive) served by a new server; returns the model's name. Leaves public schema."""
        suffix = uuid.uuid4().hex[:6]
        with tenant_context(self.tenant):
            server = serving.server_create(
                actor=self.owner,
                name=f"extra-{suffix}",
                protocol="mlflow",
                gpu_pool=gpu_pool or self.pool,
                replica_urls=replica_urls,
                request_timeout_seconds=timeout,
            )
            model = registry.model_create(actor=self.owner, name=f"copy-{suffix}")
            archive = Path(self.iris_model_dir).parent / f"{model.name}.zip"
            archive.write_bytes(zipped(self.iris_model_dir).getvalue())
            version = registry.version_register_from_upload(actor=self.owner, model=model, archive=archive)
            registry.model_promote(actor=self.owner, model=model, version=version)
            serving.deployment_create(actor=self.owner, model=model, server=server, alias="champion")
        connection.set_schema_to_public()
        return model.name

    def record(self, request_id: str) -> InferenceRecord:
        with tenant_context(self.tenant):
            return InferenceRecord.objects.get(request_id=request_id)


def pool_worker(pool: str, *, concurrency: int = 2, pool_type: str = "prefork") -> subprocess.Popen:
    """A real Celery worker on queue `pool.<pool>`, against the test database."""
    env = {**os.environ, "DATABASE_URL": database_url_for_tests(), "CELERY_DEFAULT_QUEUE": f"{pool}-default"}
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", f"pool.{pool}", "--concurrency",
         str(concurrency), "--pool", pool_type, "-l", "WARNING", "--without-heartbeat", "--without-mingle",
         "--without-gossip", "-n", f"{pool}@%h"],
        cwd=ROOT,
        env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def stack(
    django_db_setup, django_db_blocker, mlflow_store, iris_model_dir, sleepy_model_dir, sleepy_calls, tmp_path_factory
):
    """gunicorn, a pool worker and two model servers (iris; sleepy) for a tenant of the requesting module's own."""
    pool = f"t{uuid.uuid4().hex[:8]}"
    slug = f"echo{uuid.uuid4().hex[:6]}"
    scratch = tmp_path_factory.mktemp("archives")
    with (
        start_model_server(iris_model_dir) as (iris_url, _),
        start_model_server(sleepy_model_dir) as (sleepy_url, _),
        start_portal_server(workers=3) as base,
        django_db_blocker.unblock(),
    ):
        tenant = tenant_signup(
            name="Echo", slug=slug, owner_email=f"owner@{slug}.example", owner_password=PASSWORD, plan="enterprise"
        ).tenant
        with tenant_context(tenant):
            owner = User.objects.get(email=f"owner@{slug}.example")
            iris = registry.model_create(actor=owner, name="iris")
            versions = []
            for index in range(2):
                archive = scratch / f"iris-{index}.zip"
                archive.write_bytes(zipped(iris_model_dir).getvalue())
                versions.append(registry.version_register_from_upload(actor=owner, model=iris, archive=archive))
            registry.model_promote(actor=owner, model=iris, version=versions[0])
            registry.model_promote(actor=owner, model=iris, version=versions[1])
            cpu = serving.server_create(
                actor=owner, name="cpu", protocol="mlflow", gpu_pool=pool, replica_urls=[iris_url]
            )
            iris_deployment = serving.deployment_create(actor=owner, model=iris, server=cpu, alias="champion")

            sleepy = registry.model_create(actor=owner, name="sleepy")
            archive = scratch / "sleepy.zip"
            archive.write_bytes(zipped(sleepy_model_dir).getvalue())
            registry.model_promote(
                actor=owner,
                model=sleepy,
                version=registry.version_register_from_upload(actor=owner, model=sleepy, archive=archive),
            )
            slow = serving.server_create(
                actor=owner,
                name="slow",
                protocol="mlflow",
                gpu_pool=pool,
                replica_urls=[sleepy_url],
                request_timeout_seconds=3,
            )
            serving.deployment_create(actor=owner, model=sleepy, server=slow, alias="champion")
            _, secret = apikey_create(actor=owner, name="live", scopes=["inference", "models:read", "models:write"])
        connection.set_schema_to_public()
        worker = pool_worker(pool)
        stack = Stack(
            base=base,
            host=f"{slug}.localhost",
            tenant=tenant,
            owner=owner,
            secret=secret,
            pool=pool,
            worker=worker,
            iris_url=iris_url,
            cpu=cpu,
            iris_deployment=iris_deployment,
            iris_versions=versions,
            iris_model_dir=iris_model_dir,
            sleepy_url=sleepy_url,
            sleepy_calls=sleepy_calls,
        )
        try:
            stack.wait_for_worker()
            yield stack
        finally:
            worker.terminate()
            worker.wait(30)
            connection.set_schema_to_public()


@pytest.fixture
def as_db(django_db_blocker):
    with django_db_blocker.unblock():
        yield
    connection.set_schema_to_public()
