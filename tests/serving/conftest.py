"""Serving fixtures: registry rows made directly (no MLflow), real loopback health servers, keys."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apps.registry.models import ModelAlias, ModelVersion, RegisteredModel
from apps.serving.services import server_create
from tests.helpers import free_port

HEALTH_PATHS = ("/ping", "/v1/models", "/v2/health/ready")


@pytest.fixture
def make_key(make_key):
    """Serving tests mostly need keys that read and write models."""
    return functools.partial(make_key, scopes=("models:read", "models:write"))


def make_model(name: str, *, versions=(1, 2, 3), aliases: dict[str, int] | None = None, schema: str = "alpha"):
    """A registered model as the registry would mirror it, in the current schema."""
    model = RegisteredModel.objects.create(name=name, mlflow_name=f"{schema}__{name}")
    rows = {
        number: ModelVersion.objects.create(
            model=model,
            version=number,
            run_id=f"run-{name}-{number}",
            source="file:///tmp/x",
            signature={"inputs": [{"name": "x", "type": "double"}], "version": number},
        )
        for number in versions
    }
    for alias, number in (aliases or {}).items():
        ModelAlias.objects.create(model=model, alias=alias, version=rows[number])
    return model


@dataclass
class HealthStub:
    """A model server's health endpoints on loopback; `ready = False` makes them answer 503."""

    url: str
    ready: bool = True
    paths: tuple[str, ...] = HEALTH_PATHS
    seen: list[tuple[str, dict]] = field(default_factory=list)


class _HealthHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        stub: HealthStub = self.server.stub
        stub.seen.append((self.path, {name.lower(): value for name, value in self.headers.items()}))
        status = (200 if stub.ready else 503) if self.path in stub.paths else 404
        body = b'{"status": "ok"}' if status == 200 else b"{}"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def health_stub():
    """Start real HTTP servers on 127.0.0.1; each call returns one (`paths=` limits what it answers)."""
    started = []

    def start(**options) -> HealthStub:
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), _HealthHandler)
        httpd.stub = HealthStub(url=f"http://127.0.0.1:{httpd.server_address[1]}", **options)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(httpd)
        return httpd.stub

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def closed_url() -> str:
    """An address where nothing listens: connections are refused."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def make_server(cast):
    """A model server in the current schema, made by the tenant's owner unless told otherwise."""

    def make(name="gpu-a", *, actor=None, replica_urls=("http://10.0.0.1:8080",), **fields):
        fields.setdefault("protocol", "mlflow")
        fields.setdefault("gpu_pool", "a100")
        return server_create(actor=actor or cast.alice, name=name, replica_urls=list(replica_urls), **fields)

    return make
